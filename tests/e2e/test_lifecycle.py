"""Processes: a disconnect interrupts its turn and the worker comes back warm; crashes, garbage, hangs and a CLI that
ignores SIGTERM end with the worker replaced and reaped; start-up failures are 503 with a way out; `/health` says
what the CLI is and how it bills."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from maxproxy.bench.upstream import FakeUpstream, Reply

from tests import sse
from tests.conftest import Proxy, ProxyFactory, fake_cli, wait_for
from tests.e2e import CHAT, HELLO, live_workers
from tests.procs import alive, children, in_group

BODY = {"model": "claude-sonnet-4", "messages": HELLO}


def pool_of(proxy: Proxy):  # type: ignore[no-untyped-def]
    from maxproxy.state import POOL

    return proxy.app[POOL]


def settled(proxy: Proxy) -> bool:
    """Nothing lent or starting, and the test's children are exactly the pool's live workers."""
    pool = pool_of(proxy)
    mine = {int(c.split()[0]) for c in children(os.getpid())}
    return pool.busy == 0 and pool.starting == 0 and mine == set(pool.pids)


async def test_stream_disconnect_interrupts_the_turn_and_keeps_the_worker(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("tick " * 200, pieces=200, delay=0.05))  # ~10 s of output
    session = aiohttp.ClientSession()
    response = await session.post(proxy.url + CHAT, json={**BODY, "stream": True})
    await response.content.readline()  # the stream is under way
    [worker] = [w for w in live_workers(pool_of(proxy)) if w.in_turn]
    response.close()
    await session.close()
    await wait_for(lambda: settled(proxy), timeout=5)
    assert worker.alive
    assert worker.last_result is not None
    assert worker.last_result.subtype == "error_during_execution"
    answer = await proxy.openai.chat.completions.create(
        model="claude-sonnet-4", messages=[{"role": "user", "content": "next"}]
    )
    assert answer.choices[0].message.content == "Hello from fake upstream!"
    # The interrupted turn was rewound away: no partial answer, no "[Request interrupted by user]".
    sent = [m for m in upstream.messages_requests[-1].messages if m["role"] != "system"]
    assert sent == [{"role": "user", "content": [{"type": "text", "text": "next"}]}]


async def test_non_stream_disconnect_interrupts_the_turn(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply(hang_before_headers=True))
    request = asyncio.create_task(proxy.http.post(proxy.url + CHAT, json=BODY))
    await wait_for(lambda: bool(upstream.messages_requests))
    [worker] = [w for w in live_workers(pool_of(proxy)) if w.in_turn]
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await wait_for(lambda: settled(proxy) and not worker.in_turn, timeout=5)
    assert worker.alive


async def test_shutdown_stops_turns_in_flight(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(shutdown_timeout=0.5, upstream_timeout=60)
    upstream.default = Reply(hang_before_headers=True)
    request = asyncio.create_task(proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO))
    await wait_for(lambda: bool(upstream.messages_requests))
    await proxy.server.close()
    await asyncio.gather(request, return_exceptions=True)
    assert not children(os.getpid())


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [("crash", 502, "cli_failed"), ("garbage", 502, "cli_failed"), ("startup_fail", 503, "cli_unavailable")],
)
async def test_cli_faults_are_gateway_errors(
    tmp_path: Path, start_proxy: ProxyFactory, mode: str, status: int, code: str
) -> None:
    proxy = await start_proxy(claude_path=fake_cli(tmp_path, mode), interrupt_timeout=0.5)
    async with proxy.http.post(proxy.url + CHAT, json=BODY) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["code"] == code
    if mode == "crash":
        assert "fatal: something broke" in error["message"]  # the CLI's own words help the user
    if mode == "startup_fail":
        assert "unknown option" in error["message"]
    await wait_for(lambda: settled(proxy), timeout=10)
    assert pool_of(proxy).counts["retired:crashed"] == (mode != "startup_fail")


async def test_crash_mid_stream_is_an_error_event(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(claude_path=fake_cli(tmp_path, "crash"))
    async with proxy.http.post(proxy.url + CHAT, json={**BODY, "stream": True}) as response:
        assert response.status == 200
        stream = await sse.read(response)
    assert stream.text == "partial "
    assert stream.chunks[-1]["error"]["code"] == "cli_failed"
    assert stream.data[-1] == "[DONE]"


async def stubborn(tmp_path: Path, start_proxy: ProxyFactory, mode: str) -> Proxy:
    """maxproxy on a fake CLI whose turns never end by themselves, with short limits and stop steps."""
    return await start_proxy(
        claude_path=fake_cli(tmp_path, mode),
        max_turn_seconds=1.0,
        stop_step_timeout=0.5,
        interrupt_timeout=0.5,
        min_idle=0,
    )


async def test_a_cli_that_ignores_interrupts_and_sigterm_is_killed(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    proxy = await stubborn(tmp_path, start_proxy, "ignore_sigterm")
    request = asyncio.create_task(proxy.http.post(proxy.url + CHAT, json=BODY))
    await wait_for(lambda: any(w.in_turn for w in live_workers(pool_of(proxy))))
    [pid] = pool_of(proxy).pids
    response = await request
    assert response.status == 504
    response.close()
    await wait_for(lambda: not alive(pid) and settled(proxy), timeout=10)
    assert pool_of(proxy).counts["retired:interrupt_timeout"] == 1


async def test_endless_output_hits_the_hard_cap_and_the_worker_survives(
    tmp_path: Path, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(claude_path=fake_cli(tmp_path, "endless"), max_turn_seconds=1.0, min_idle=0)
    async with proxy.http.post(proxy.url + CHAT, json={**BODY, "stream": True}) as response:
        stream = await sse.read(response)
    assert stream.text.startswith("la la ")
    assert stream.chunks[-1]["error"]["code"] == "turn_timeout"
    await wait_for(lambda: settled(proxy) and pool_of(proxy).idle == 1)  # interrupted, then warm again


async def test_processes_started_by_the_cli_go_with_it(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    proxy = await stubborn(tmp_path, start_proxy, "grandchild")
    request = asyncio.create_task(proxy.http.post(proxy.url + CHAT, json=BODY))
    await wait_for(lambda: bool(pool_of(proxy).pids) and len(in_group(pool_of(proxy).pids[0])) == 2)
    group = pool_of(proxy).pids[0]
    response = await request
    assert response.status == 504
    response.close()
    await wait_for(lambda: not in_group(group), timeout=10)


async def test_health_reports_the_cli_and_how_it_bills(proxy: Proxy) -> None:
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 200
        health = await response.json()
    assert health["ready"] is True
    assert health["cli"]["version"] == health["cli"]["pinned_version"] == "2.1.328"
    assert health["cli"]["token_source"] == "CLAUDE_CODE_OAUTH_TOKEN"
    assert health["cli"]["billing"] == "subscription"


async def test_health_warns_when_an_api_key_is_billed(
    cli_env: Path, start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    proxy = await start_proxy()
    async with proxy.http.get(proxy.url + "/health") as response:
        health = await response.json()
    assert health["cli"]["api_key_source"] == "ANTHROPIC_API_KEY"
    assert health["cli"]["billing"] == "api_key"


async def test_missing_cli_is_503_with_what_to_do(tmp_path: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(claude_path=str(tmp_path / "no-such-claude"))
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 503
        assert (await response.json())["cli"]["found"] is False
    async with proxy.http.post(proxy.url + CHAT, json=BODY) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == "cli_unavailable"
    assert "MAXPROXY_CLAUDE_PATH" in error["message"]


async def test_models_list_and_get(proxy: Proxy) -> None:
    listed = await proxy.openai.models.list()
    ids = [m.id for m in listed.data]
    for expected in (
        "claude-opus-4",
        "claude-sonnet-4",
        "claude-haiku-4",
        "opus",
        "sonnet",
        "haiku",
        "claude-sonnet-4-20250514",
    ):
        assert expected in ids
    assert all(m.object == "model" and m.owned_by == "anthropic" and m.created > 0 for m in listed.data)
    one = await proxy.openai.models.retrieve("claude-opus-4")
    assert one.id == "claude-opus-4"
