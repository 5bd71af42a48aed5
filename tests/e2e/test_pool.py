"""The warm worker pool: reuse that leaks nothing, per-family limits with a bounded fair queue, health-driven
recycling, start-up back-off, leftovers of a crashed maxproxy, the per-turn event bus, and chaos that leaves no
orphans or zombies behind."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from maxproxy.bench.daemon import daemon, processes_in
from maxproxy.bench.upstream import FakeUpstream, Reply
from maxproxy.bus import Alert, TurnEnd
from maxproxy.claude.events import StreamEvent
from maxproxy.pool import Pool
from maxproxy.state import BUS, POOL

from tests import sse
from tests.conftest import Proxy, ProxyFactory, fake_cli, wait_for
from tests.e2e import CHAT, HELLO, quiet
from tests.procs import alive, children


def pool_of(proxy: Proxy) -> Pool:
    return proxy.app[POOL]


def ask(text: str, model: str = "claude-sonnet-4", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post(proxy: Proxy, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with proxy.http.post(proxy.url + CHAT, json=body) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_warm_worker_is_ready_before_the_first_request(proxy: Proxy) -> None:
    pool = pool_of(proxy)
    await wait_for(lambda: pool.idle == 1)
    spawned = pool.counts["spawned"]
    await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert pool.counts["spawned"] == spawned  # served by the warm worker; its replacement comes after
    await wait_for(lambda: pool.idle >= 1 and pool.busy == 0)


async def test_a_reused_worker_leaks_nothing_of_earlier_conversations(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(max_workers=1, min_idle=0)
    history = [
        {"role": "user", "content": "SECRET-B1"},
        {"role": "assistant", "content": "SECRET-B2"},
        {"role": "user", "content": "question B"},
    ]
    conversations: list[list[dict[str, str]]] = [
        [{"role": "user", "content": "SECRET-A"}],
        history,
        [{"role": "user", "content": "question C"}],
        [{"role": "user", "content": "question D"}],
    ]
    pids = set()
    for messages in conversations:
        status, _, _ = await post(proxy, {"model": "claude-sonnet-4", "messages": messages})
        assert status == 200
        await wait_for(lambda: pool_of(proxy).busy == 0)
        pids.update(pool_of(proxy).pids)
    # Single-prompt conversations are rewound to nothing on the same process; a replayed history costs the process.
    assert pool_of(proxy).counts["retired:reclaim_failed"] == 1
    assert len(pids) == 2
    calls = upstream.messages_requests
    assert len(calls) == 4
    for n, call in enumerate(calls):
        seen = json.dumps([m for m in call.messages if m["role"] != "system"])
        for earlier in ("SECRET-A", "SECRET-B1", "SECRET-B2", "question B", "question C")[: [0, 1, 4, 5][n]]:
            assert earlier not in seen, f"conversation {n} saw {earlier}"
    # Every request reaches the model as exactly its own conversation: no earlier text, no reset residue.
    for call, messages in zip(calls, conversations, strict=True):
        sent = [(m["role"], "".join(b["text"] for b in m["content"])) for m in call.messages if m["role"] != "system"]
        assert sent == [(m["role"], m["content"]) for m in messages]


async def test_limits_queue_then_429(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(limits={"sonnet": 1}, queue_max=1, queue_timeout=30)
    upstream.default = Reply.text("slow answer", pieces=10, delay=0.1)
    first = asyncio.create_task(post(proxy, ask("one")))
    await wait_for(lambda: pool_of(proxy).busy == 1)
    second = asyncio.create_task(post(proxy, ask("two")))
    await wait_for(lambda: pool_of(proxy).queued == 1)
    status, body, headers = await post(proxy, ask("three"))
    assert status == 429
    assert body["error"]["code"] == "queue_full"
    assert int(headers["Retry-After"]) >= 1
    assert [(await first)[0], (await second)[0]] == [200, 200]
    # Another family is not held up by the sonnet limit.
    status, _, _ = await post(proxy, ask("four", model="claude-haiku-4"))
    assert status == 200


async def test_queue_timeout_is_429(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(limits={"sonnet": 1}, queue_timeout=0.5, upstream_timeout=60)
    upstream.push(Reply(hang_before_headers=True))
    first = asyncio.create_task(post(proxy, ask("one")))
    await wait_for(lambda: pool_of(proxy).busy == 1)
    status, body, headers = await post(proxy, ask("two"))
    assert (status, body["error"]["code"]) == (429, "queue_timeout")
    assert "Retry-After" in headers
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def test_a_cancelled_waiter_gives_its_place_back(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(limits={"sonnet": 1}, queue_max=1, queue_timeout=30, upstream_timeout=60)
    upstream.push(Reply(hang_before_headers=True))
    first = asyncio.create_task(post(proxy, ask("one")))
    await wait_for(lambda: bool(upstream.messages_requests))  # the first turn hangs upstream
    waiting = asyncio.create_task(post(proxy, ask("two")))
    await wait_for(lambda: pool_of(proxy).queued == 1)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await wait_for(lambda: pool_of(proxy).queued == 0)
    third = asyncio.create_task(post(proxy, ask("three")))  # the queue has room again
    await wait_for(lambda: pool_of(proxy).queued == 1)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    status, _, _ = await third
    assert status == 200


async def test_per_turn_options_change_on_a_warm_worker(proxy: Proxy, upstream: FakeUpstream) -> None:
    await proxy.openai.chat.completions.create(
        model="claude-sonnet-4", messages=HELLO, max_tokens=16, reasoning_effort="low"
    )
    await wait_for(lambda: pool_of(proxy).busy == 0)
    await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    first, second = upstream.messages_requests
    assert (first.body["max_tokens"], first.body["output_config"]["effort"]) == (16, "low")
    assert second.body["max_tokens"] > 16
    assert second.body["output_config"]["effort"] != "low"


async def test_each_model_gets_its_own_workers(proxy: Proxy, upstream: FakeUpstream) -> None:
    for model in ("claude-opus-4", "claude-sonnet-4", "claude-haiku-4", "claude-opus-4"):
        await proxy.openai.chat.completions.create(model=model, messages=HELLO)
        await wait_for(lambda: pool_of(proxy).busy == 0)
    assert [r.body["model"] for r in upstream.messages_requests] == [
        "claude-opus-5-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
        "claude-opus-5-5",
    ]


async def test_system_prompt_replace_mode_keys_warm_workers_by_prompt(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(system_prompt_mode="replace", min_idle=0)
    for prompt in ("PROMPT-ONE", "PROMPT-TWO", "PROMPT-ONE"):
        await proxy.openai.chat.completions.create(
            model="claude-sonnet-4", messages=[{"role": "system", "content": prompt}, *HELLO]
        )
        await wait_for(lambda: pool_of(proxy).busy == 0)
    systems = [r.system_text() for r in upstream.messages_requests]
    assert ["PROMPT-ONE" in s for s in systems] == [True, False, True]
    assert ["PROMPT-TWO" in s for s in systems] == [False, True, False]
    assert pool_of(proxy).counts["spawned"] == 2  # the third request reused the first prompt's worker


@pytest.mark.parametrize(
    ("overrides", "reply", "reason"),
    [
        ({"worker_max_turns": 1}, Reply(), "max_turns"),
        ({"worker_max_rss_mb": 1}, Reply(), "rss"),
        ({}, Reply.error(500), "turn_error"),
    ],
)
async def test_unhealthy_workers_are_replaced(
    cli_env: Path,
    start_proxy: ProxyFactory,
    upstream: FakeUpstream,
    overrides: dict[str, Any],
    reply: Reply,
    reason: str,
) -> None:
    proxy = await start_proxy(min_idle=0, **overrides)
    upstream.default = reply
    await post(proxy, ask("one"))
    await wait_for(lambda: pool_of(proxy).busy == 0)
    assert pool_of(proxy).counts[f"retired:{reason}"] == 1
    upstream.default = Reply()
    status, _, _ = await post(proxy, ask("two"))
    assert status == 200


async def test_start_failures_back_off_and_health_says_so(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(claude_path=fake_cli(tmp_path, "startup_fail"), min_idle=0)
    pool = pool_of(proxy)
    for _ in range(3):
        status, body, _ = await post(proxy, ask("hi"))
        assert (status, body["error"]["code"]) == (503, "cli_unavailable")
    failures = pool.counts["start_failed"]
    status, body, headers = await post(proxy, ask("hi"))
    assert status == 503
    assert "keep failing" in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    assert pool.counts["start_failed"] == failures  # no spawn while backing off
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 503
        assert any("failing to start" in p for p in (await response.json())["problems"])


async def test_start_up_kills_workers_a_crashed_maxproxy_left(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    # A process that looks like an orphaned worker of an earlier maxproxy: recorded in the registry, still running.
    orphan = await asyncio.create_subprocess_exec(
        fake_cli(tmp_path, "endless"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        from maxproxy.pool.registry import start_time

        await wait_for(lambda: bool(start_time(orphan.pid)))
        registry = tmp_path / "state" / "workers"
        registry.mkdir(parents=True)
        (registry / str(orphan.pid)).write_text(start_time(orphan.pid))
        await start_proxy(claude_path=fake_cli(tmp_path, "answer"), min_idle=0)
        async with asyncio.timeout(10):
            await orphan.wait()
        assert orphan.returncode == -signal.SIGKILL
        assert not (registry / str(orphan.pid)).exists()
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()


async def test_the_event_bus_sees_every_turn_and_never_slows_it(proxy: Proxy, upstream: FakeUpstream) -> None:
    bus = proxy.app[BUS]
    reader = bus.subscribe()
    stuck = bus.subscribe(maxsize=1)  # a subscriber that never reads
    upstream.push(Reply.text("streamed to the bus", pieces=5, delay=0.05))
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "streamed to the bus"
    items = []
    refs = set()
    async with asyncio.timeout(5):
        async for entry in reader:
            if isinstance(entry, Alert):
                continue
            ref, item = entry
            items.append(item)
            refs.add(ref)
            if isinstance(item, TurnEnd):
                break
    [ref] = refs  # one turn
    texts = [i.event.delta.text for i in items if isinstance(i, StreamEvent) and i.event.delta and i.event.delta.text]
    assert "".join(texts) == "streamed to the bus"
    assert isinstance(items[-1], TurnEnd)
    assert items[-1].seconds >= 0.25  # the whole turn, not just taking the worker back
    assert items[-1].outcome == "ok"
    assert ref.model == "claude-sonnet-4"
    assert ref.request_id
    assert stuck.dropped > 0
    assert bus.dropped >= stuck.dropped
    reader.close()
    stuck.close()


async def test_chaos_leaves_no_orphans_or_zombies(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    """200 requests: answers, CLI crashes, garbage, hangs, endless output, and clients that walk away."""
    proxy = await start_proxy(
        claude_path=fake_cli(tmp_path, "chaos"),
        max_workers=4,
        limits={"sonnet": 4},
        queue_max=200,
        queue_timeout=60,
        inactivity_timeout=1.0,
        max_turn_seconds=2.0,
        interrupt_timeout=0.5,
        stop_step_timeout=0.5,
        keepalive_interval=0.2,
    )
    pool = pool_of(proxy)
    rng = random.Random(7)
    kinds = ["answer", "answer", "crash", "garbage", "hang", "endless"]
    peak = 0

    async def one(n: int) -> None:
        nonlocal peak
        body = {**ask(f"{rng.choice(kinds)} #{n}"), "stream": rng.random() < 0.5}
        leave_after = rng.random() * 0.3 if rng.random() < 0.3 else None
        try:
            async with asyncio.timeout(leave_after or 30):
                async with proxy.http.post(proxy.url + CHAT, json=body) as response:
                    await response.read()
        except TimeoutError:
            pass  # the client walked away
        peak = max(peak, len(children(os.getpid())))

    gate = asyncio.Semaphore(8)

    async def gated(n: int) -> None:
        async with gate:
            await one(n)

    await asyncio.gather(*(gated(n) for n in range(200)))
    await wait_for(lambda: quiet(pool), timeout=30)
    mine = children(os.getpid())
    assert not [c for c in mine if "[Z]" in c], mine
    assert len(mine) <= 4
    assert {int(c.split()[0]) for c in mine} == set(pool.pids)
    assert peak <= 4  # max_workers bounds every process, those being stopped included
    assert all(alive(pid) for pid in pool.pids)
    status, body, _ = await post(proxy, ask("answer after the storm"))
    assert (status, body["choices"][0]["message"]["content"]) == (200, "fake answer")


async def test_real_cli_disconnects_and_hangs_leave_the_pool_clean(proxy: Proxy, upstream: FakeUpstream) -> None:
    rng = random.Random(3)
    replies = [Reply.text("ok " * 30, pieces=30, delay=0.02), Reply(hang_before_headers=True)]
    upstream.responder = lambda _: rng.choice(replies)

    async def one() -> None:
        try:
            async with asyncio.timeout(rng.uniform(0.2, 1.0)):
                async with proxy.http.post(proxy.url + CHAT, json={**ask("hi"), "stream": True}) as response:
                    await response.read()
        except TimeoutError:
            pass

    for _ in range(4):
        await asyncio.gather(*(one() for _ in range(5)))
    pool = pool_of(proxy)
    await wait_for(lambda: quiet(pool), timeout=30)
    assert not [c for c in children(os.getpid()) if "[Z]" in c]
    assert len(pool.pids) <= proxy.settings.max_workers
    upstream.responder = None
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "Hello from fake upstream!"


async def test_sigterm_lets_streams_in_flight_finish(cli_env: Path, upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.default = Reply.text("word " * 30, pieces=30, delay=0.05)  # ~1.5 s per stream
    state = tmp_path / "daemon-state"
    env = {
        **os.environ,
        "MAXPROXY_STATE_DIR": str(state),
        "MAXPROXY_LOG_FORMAT": "json",
        "MAXPROXY_SHUTDOWN_TIMEOUT": "20",
    }
    async with daemon(env) as (proc, url, records):
        async with aiohttp.ClientSession() as http:
            responses = [await http.post(url + CHAT, json={**ask(f"stream {n}"), "stream": True}) for n in range(2)]
            for response in responses:
                await response.content.readline()  # both streams are under way
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: any(r["event"] == "stopping" for r in records))
            # The listener stays open while the streams finish: a new request is refused with 503, not at the socket.
            async with http.post(url + CHAT, json=ask("too late"), headers={"Connection": "close"}) as late:
                assert late.status == 503
                assert int(late.headers["Retry-After"]) >= 1
                assert (await late.json())["error"]["type"] == "service_unavailable"
            streams = [await sse.read(response) for response in responses]
        for stream in streams:
            assert stream.text == "word " * 30
            assert stream.data[-1] == "[DONE]"
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    assert not processes_in(state), "a CLI worker outlived the daemon"


async def test_idle_workers_beyond_min_idle_retire(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(idle_timeout=0.3)
    pool = pool_of(proxy)
    await proxy.openai.chat.completions.create(model="claude-haiku-4", messages=HELLO)  # not a warm model
    await wait_for(lambda: pool.counts["retired:idle"] == 1, timeout=15)
    await wait_for(lambda: pool.idle == 1)  # the warm sonnet worker stays
    assert pool.counts["retired:idle"] == 1


async def test_draining_refuses_new_work_with_503(proxy: Proxy) -> None:
    pool_of(proxy).drain()
    status, body, headers = await post(proxy, ask("hi"))
    assert (status, body["error"]["type"]) == (503, "service_unavailable")
    assert int(headers["Retry-After"]) >= 1
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 503
        assert "shutting down" in (await response.json())["problems"]


async def test_workers_do_not_outlive_a_killed_maxproxy(cli_env: Path, tmp_path: Path) -> None:
    state = tmp_path / "daemon-state"
    env = {**os.environ, "MAXPROXY_STATE_DIR": str(state), "MAXPROXY_LOG_FORMAT": "json", "MAXPROXY_MIN_IDLE": "2"}
    async with daemon(env) as (proc, _, _):
        await wait_for(lambda: len(processes_in(state)) >= 2, timeout=30)
        proc.kill()  # no clean-up code runs
        await proc.wait()
    # Their stdin closed with maxproxy: idle workers exit by themselves.
    await wait_for(lambda: not processes_in(state), timeout=15)


async def test_a_worker_started_for_a_client_that_left_is_kept_warm(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(min_idle=0)
    pool = pool_of(proxy)
    request = asyncio.create_task(post(proxy, ask("hi", model="claude-haiku-4")))
    await wait_for(lambda: pool.starting == 1)
    request.cancel()  # gone while its worker is still starting
    await asyncio.gather(request, return_exceptions=True)
    await wait_for(lambda: pool.idle == 1 and pool.busy == 0)
    assert pool.counts["spawned"] == 1
    assert not [reason for reason in pool.counts if reason.startswith("retired:")]
    status, _, _ = await post(proxy, ask("again", model="claude-haiku-4"))
    assert status == 200
    assert pool.counts["spawned"] == 1  # the next request found it warm
