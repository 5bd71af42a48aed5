"""A bounded soak through the real CLI: 150 requests at concurrency 6, stream and not, mixing answers, upstream 500s,
529s and hangs, clients that walk away, and `kill -9` of CLI workers. Every answer is right or the error its fault
calls for (never a 500), no process is left behind or exceeds `max_workers`, and the next request is answered."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from maxproxy.bench.upstream import FakeUpstream, Received, Reply
from maxproxy.state import POOL

from tests import sse
from tests.conftest import ProxyFactory, wait_for
from tests.e2e import CHAT, live_workers, quiet
from tests.procs import alive, children

REQUESTS = 150
CONCURRENCY = 6
MAX_WORKERS = 4
ANSWER = "soak answer " * 5
KINDS = ["answer"] * 6 + ["e500", "e529", "hang"]
# What each fault may end in: (HTTP status, error code) for a plain answer; the code inside a stream. A killed
# worker (`kill -9`) can end any request with the CLI's failure.
Outcome = set[tuple[int, str | None]]
EXPECTED: dict[str, Outcome] = {
    "answer": {(200, None)},
    "e500": {(502, "upstream_error")},
    "e529": {(529, "upstream_overloaded")},
    "hang": {(504, "cli_inactivity_timeout")},
}
KILLED: Outcome = {(502, "cli_failed"), (503, "cli_unavailable")}
STATUS_OF = {code: status for group in (*EXPECTED.values(), KILLED) for status, code in group if code}


def respond(received: Received) -> Reply:
    """The reply the request's own prompt asks for (`kind:<kind>`), so each answer can be checked against it."""
    seen = json.dumps(received.body.get("messages", []))
    kind = next((k for k in ("e500", "e529", "hang") if f"kind:{k}" in seen), "answer")
    if kind == "e500":
        return Reply.error(500)
    if kind == "e529":
        return Reply.error(529)
    if kind == "hang":
        return Reply(hang_before_headers=True)
    return Reply.text(ANSWER, pieces=5, delay=0.01)


@pytest.mark.timeout(150)
async def test_soak(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(
        max_workers=MAX_WORKERS,
        min_idle=2,
        limits={"sonnet": MAX_WORKERS},
        queue_max=REQUESTS,
        queue_timeout=60,
        inactivity_timeout=2.0,
        interrupt_timeout=2.0,
        stop_step_timeout=1.0,
        keepalive_interval=0.5,
        upstream_timeout=60,
    )
    pool = proxy.app[POOL]
    upstream.responder = respond
    rng = random.Random(12)
    outcomes: list[tuple[str, int, str | None]] = []
    wrong: list[str] = []
    peak = 0
    kills = 0

    async def one(n: int) -> None:
        kind = rng.choice(KINDS)
        stream = rng.random() < 0.5
        leave_after = rng.uniform(0.05, 0.5) if rng.random() < 0.15 else None
        body: dict[str, Any] = {
            "model": "claude-sonnet-4",
            "messages": [{"role": "user", "content": f"soak #{n} kind:{kind}"}],
            "stream": stream,
        }
        try:
            async with asyncio.timeout(leave_after or 60):
                async with proxy.http.post(proxy.url + CHAT, json=body) as response:
                    status, code, text = response.status, None, None
                    if stream and status == 200:
                        read = await sse.read(response)
                        error = next((c["error"] for c in read.chunks if "error" in c), None)
                        if error is not None:  # judged as the status it would have had before the stream began
                            code = error["code"]
                            status = STATUS_OF.get(code, 200)
                        elif read.data[-1:] != ["[DONE]"]:
                            wrong.append(f"#{n} {kind}: a stream without [DONE]")
                        text = read.text
                    elif status == 200:
                        text = (await response.json())["choices"][0]["message"]["content"]
                    else:
                        code = (await response.json())["error"]["code"]
        except TimeoutError:
            if leave_after is None:
                wrong.append(f"#{n} {kind}: no answer in 60 s")
            return  # the client walked away
        except aiohttp.ClientPayloadError as exc:
            wrong.append(f"#{n} {kind}: a broken response ({exc})")
            return
        outcomes.append((kind, status, code))
        if (status, code) not in EXPECTED[kind] | KILLED:
            wrong.append(f"#{n} {kind} ({'stream' if stream else 'json'}): {status} {code}")
        elif code is None and text != ANSWER:
            wrong.append(f"#{n} {kind}: wrong text {text!r}")

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len([c for c in children(os.getpid()) if "[Z]" not in c]))
            await asyncio.sleep(0.01)

    async def killer() -> None:
        nonlocal kills
        while True:
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            busy = [w.pid for w in live_workers(pool) if w.in_turn]  # a worker in the middle of a turn, as a crash hits
            if busy:
                os.kill(rng.choice(busy), signal.SIGKILL)
                kills += 1

    gate = asyncio.Semaphore(CONCURRENCY)

    async def gated(n: int) -> None:
        async with gate:
            await one(n)

    watcher = asyncio.create_task(watch())
    chaos = asyncio.create_task(killer())
    try:
        async with asyncio.timeout(100):
            await asyncio.gather(*(gated(n) for n in range(REQUESTS)))
    finally:
        chaos.cancel()
        await asyncio.gather(chaos, return_exceptions=True)
    await wait_for(lambda: quiet(pool), timeout=30)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)

    summary = collections.Counter(f"{kind}->{status}:{code}" for kind, status, code in outcomes)
    print(f"soak: {dict(summary)} kills={kills} peak={peak} pool={dict(pool.counts)}")  # shown with `pytest -s`
    assert not wrong, wrong
    assert peak <= MAX_WORKERS, f"{peak} CLI processes with max_workers = {MAX_WORKERS}"
    mine = children(os.getpid())
    assert not [c for c in mine if "[Z]" in c], mine
    assert {int(c.split()[0]) for c in mine} == set(pool.pids)
    assert all(alive(pid) for pid in pool.pids)
    assert kills > 0
    answered = [o for o in outcomes if o[0] == "answer" and o[1] == 200 and o[2] is None]
    assert len(answered) > REQUESTS // 3
    upstream.responder = None
    async with proxy.http.post(
        proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "after"}]}
    ) as response:
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"] == "Hello from fake upstream!"
