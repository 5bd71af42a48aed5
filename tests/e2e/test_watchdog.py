"""The turn watchdog's clocks start with the turn: a worker that was quiet before a request gets the whole inactivity
limit, and a hung turn that maxproxy interrupts gets the whole `interrupt_timeout` to end (so its worker is kept
warm, not killed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from maxproxy.bench.upstream import FakeUpstream, Reply
from maxproxy.pool import Pool
from maxproxy.state import POOL

from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import CHAT, HELLO

BODY = {"model": "claude-sonnet-4", "messages": HELLO}


def pool_of(proxy: Proxy) -> Pool:
    return proxy.app[POOL]


async def test_first_request_after_a_quiet_spell_is_answered(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(inactivity_timeout=2.0, max_workers=1, min_idle=1)
    pool = pool_of(proxy)
    await wait_for(lambda: pool.idle == 1, timeout=30)
    # The warm worker's last output line (its `initialize` answer) is now older than the inactivity limit. The
    # quiet spell has to be real time: it is what the watchdog measures.
    await asyncio.sleep(2.5)
    async with proxy.http.post(proxy.url + CHAT, json=BODY) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["choices"][0]["message"]["content"] == "Hello from fake upstream!"
    assert pool.counts["spawned"] == 1  # served by the worker that had been quiet


async def test_a_hung_turn_is_interrupted_and_its_worker_kept(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    # The turn is silent for inactivity_timeout (2 s), longer than interrupt_timeout (1 s): measured from the last
    # output line, the interrupt's own clock had run out before it was sent.
    proxy = await start_proxy(
        inactivity_timeout=2.0, interrupt_timeout=1.0, upstream_timeout=60, max_workers=1, min_idle=1
    )
    pool = pool_of(proxy)
    await wait_for(lambda: pool.idle == 1, timeout=30)
    pids = pool.pids
    upstream.push(Reply(hang_before_headers=True))
    async with proxy.http.post(proxy.url + CHAT, json=BODY) as response:
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "cli_inactivity_timeout"
    await wait_for(lambda: pool.busy == 0 and pool.idle == 1, timeout=30)
    assert pool.counts["retired:interrupt_timeout"] == 0
    assert pool.pids == pids  # interrupted and kept warm
    async with proxy.http.post(proxy.url + CHAT, json=BODY) as response:
        assert response.status == 200
    assert pool.pids == pids
