"""Races for room in the pool, on a fake CLI that takes 1.5 s to start (the window real traffic hits): a start
belongs to the request that asked for it and nobody else cancels it, and the processes never exceed `max_workers`,
not even for a moment."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from maxproxy import errors
from maxproxy.bus import Bus
from maxproxy.claude.command import Launch
from maxproxy.pool import Pool

from tests.conftest import fake_cli, make_settings, wait_for
from tests.procs import children


@contextlib.asynccontextmanager
async def slow_pool(tmp_path: Path, **overrides: Any) -> AsyncIterator[Pool]:
    settings = make_settings(tmp_path, claude_path=fake_cli(tmp_path, "slow_start"), stop_step_timeout=1.0, **overrides)
    pool = Pool(settings, Bus(), settings.model_table)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def peak_processes() -> AsyncIterator[list[int]]:
    """Samples this test's child processes every few ms; the list's one item is the most seen at once."""
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], len(children(os.getpid())))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def hold(pool: Pool, model: str, release: asyncio.Event, got: list[int], **kw: Any) -> None:
    async with pool.acquire(Launch(model=model), model, **kw) as lease:
        got.append(lease.pid)
        await release.wait()


async def test_a_start_a_request_waits_for_is_never_cancelled_for_room(tmp_path: Path) -> None:
    async with slow_pool(tmp_path, max_workers=3, min_idle=1, warm_models=["claude-sonnet-4"]) as pool:
        await wait_for(lambda: pool.idle == 1, timeout=15)
        release = asyncio.Event()
        got: list[int] = []
        resumed = asyncio.create_task(hold(pool, "haiku", release, got, resume="a-recorded-session"))
        await wait_for(lambda: pool.starting == 1)  # the resume's own start
        taker = asyncio.create_task(hold(pool, "sonnet", release, got))  # takes the warm worker ...
        await wait_for(lambda: pool.starting == 2)  # ... and the warm set starts its replacement
        async with peak_processes() as peak:
            third = asyncio.create_task(hold(pool, "opus", release, got))  # needs room: 3 processes already
            await wait_for(lambda: len(got) == 3, timeout=20)
            assert not resumed.done()  # it got its worker and holds it: not cancelled under it
            release.set()
            await asyncio.gather(resumed, taker, third)
        assert peak[0] <= 3
        assert pool.counts["spawned"] == 3  # the warm set's replacement was the start given up for room


async def test_requests_racing_for_room_never_exceed_max_workers(tmp_path: Path) -> None:
    async with slow_pool(tmp_path, max_workers=2, min_idle=2, warm_models=["claude-sonnet-4"]) as pool:
        await wait_for(lambda: pool.starting == 2)  # the warm set fills every place
        release = asyncio.Event()
        got: list[int] = []
        async with peak_processes() as peak:
            first = asyncio.create_task(hold(pool, "haiku", release, got))  # cancels a warm start for room ...
            # ... which is then being reaped (its CLI notices stdin EOF only when SIGTERM comes, 1 s later); the
            # second request comes meanwhile. This pause orders the two requests; it is not what is asserted.
            await asyncio.sleep(0.3)
            second = asyncio.create_task(hold(pool, "opus", release, got))
            await wait_for(lambda: len(got) == 2, timeout=30)
            release.set()
            await asyncio.gather(first, second)
        assert peak[0] <= 2, f"{peak[0]} processes with max_workers = 2"
        assert pool.counts["spawned"] == 2  # both warm starts were given up for the requests' own


async def test_draining_starts_nothing_and_answers_waiting_requests_at_once(tmp_path: Path) -> None:
    async with slow_pool(tmp_path, max_workers=1, min_idle=0, limits={"haiku": 1}) as pool:
        release = asyncio.Event()
        got: list[int] = []
        starting = asyncio.create_task(hold(pool, "haiku", release, got))
        await wait_for(lambda: pool.starting == 1)
        queued = asyncio.create_task(hold(pool, "haiku", release, got))  # waits for the one place
        await wait_for(lambda: pool.queued == 1)
        pool.drain()
        with contextlib.suppress(errors.Unavailable):
            await queued
        assert isinstance(queued.exception(), errors.Unavailable)  # 503 at once, not when the turn ends
        await wait_for(lambda: len(got) == 1, timeout=15)  # the start under way is its request's, in flight
        assert pool.counts["spawned"] == 1
        release.set()
        await starting
        late = asyncio.create_task(hold(pool, "sonnet", release, got))
        with contextlib.suppress(errors.Unavailable):
            await late
        assert isinstance(late.exception(), errors.Unavailable)
        assert pool.counts["spawned"] == 1  # nothing was started while draining
        assert pool.starting == 0
