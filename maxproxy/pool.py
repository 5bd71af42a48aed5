"""The pool owns every CLI worker and hands them to requests with `async with pool.acquire(launch) as worker`.

In this version each acquire starts a fresh worker and stops it on release, so no `claude` process outlives its
request; release happens on every path (success, error, client disconnect, cancellation), and shutdown stops all
workers still running. Warm workers, limits and queueing build on this interface.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from maxproxy import errors
from maxproxy.claude.command import Launch
from maxproxy.claude.worker import Worker
from maxproxy.settings import Settings

log = structlog.get_logger("maxproxy.pool")


class Pool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._workers: set[Worker] = set()
        self._closed = False

    @property
    def busy(self) -> int:
        return len(self._workers)

    @contextlib.asynccontextmanager
    async def acquire(self, launch: Launch) -> AsyncIterator[Worker]:
        if self._closed:
            raise errors.Unavailable("maxproxy is shutting down", retry_after=5)
        worker = await Worker.start(self.settings, launch)
        self._workers.add(worker)
        try:
            yield worker
        finally:
            # The worker stays tracked until it is reaped, even if this request is cancelled meanwhile.
            stopping = worker.stop()
            stopping.add_done_callback(lambda _: self._workers.discard(worker))
            await asyncio.shield(stopping)

    async def close(self) -> None:
        """Stop every worker (interrupting turns in flight) and reap them all."""
        self._closed = True
        workers = list(self._workers)
        if workers:
            log.info("pool_stopping", workers=len(workers))
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
