"""The pool's admission queue: a request needs a slot, under its model family's limit and the global `max_workers`;
over them it waits in one queue, bounded per family by `queue_max` and in time by `queue_timeout` (then 429 with a
`Retry-After` estimated from the family's recent turn times), and a cancelled waiter gives its place back. The queue
is fair between API keys (start-time fair queuing): each request gets a tag one past the later of its key's previous
tag and the tag last served in its family, and the lowest tag goes first (equal tags in arrival order), so a key that
floods the queue does not starve the others — two busy keys get a slot in turn. Draining refuses new and queued
requests with 503. Nothing here knows about processes: the pool admits, then finds a worker, then releases.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import structlog

from maxproxy import errors
from maxproxy.bus import Bus, QueueWait

log = structlog.get_logger("maxproxy.pool.admission")

DEFAULT_TURN_SECONDS = 5.0  # the Retry-After estimate's guess for a family that has not finished a turn yet
SHUTDOWN_RETRY_AFTER = 5


class _Waiter:
    __slots__ = ("family", "future", "tag")

    def __init__(self, family: str, tag: float) -> None:
        self.family = family
        self.tag = tag
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def granted(self) -> bool:
        return self.future.done() and not self.future.cancelled() and self.future.exception() is None


def _shutting_down() -> errors.Unavailable:
    return errors.Unavailable("maxproxy is shutting down", retry_after=SHUTDOWN_RETRY_AFTER)


class Admission:
    def __init__(self, limit: Callable[[str], int], total: int, queue_max: int, queue_timeout: float, bus: Bus) -> None:
        self._limit = limit  # family → concurrent turns (`settings.limits.of`)
        self._total = total  # `settings.max_workers`
        self._queue_max = queue_max
        self._queue_timeout = queue_timeout
        self._bus = bus
        self._busy: collections.Counter[str] = collections.Counter()
        self._busy_total = 0
        self._waiters: list[_Waiter] = []  # in arrival order, only those still waiting
        self._queued: collections.Counter[str] = collections.Counter()  # kept equal to `_waiters` by family
        self._served: dict[str, float] = {}  # family → the tag served last (the fair queue's clock)
        self._tags: dict[tuple[str, str], float] = {}  # (family, key) → the key's latest tag
        self._turn_seconds: dict[str, float] = {}  # family → EWMA of whole turns, for Retry-After
        self._draining = False

    # --- state -----------------------------------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        return self._busy_total

    def busy_in(self, family: str) -> int:
        return self._busy[family]

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def depths(self) -> dict[str, int]:
        return {family: n for family, n in self._queued.items() if n}

    @property
    def draining(self) -> bool:
        return self._draining

    # --- admitting -------------------------------------------------------------------------------------------------

    async def admit(self, family: str, key: str) -> None:
        """Return holding one slot of `family` (give it back with `release`); raise RateLimited when the family's
        queue is full or the wait took longer than `queue_timeout`, Unavailable when draining."""
        if self._draining:
            raise _shutting_down()
        # Only when nobody of this family waits: a newcomer must not overtake the queue when a slot frees.
        if self._can_run(family) and not self._queued[family]:
            self._take_slot(family)
            self._served[family] = self._tag(family, key)
            self._bus.note(QueueWait(family, 0.0))
            return
        if self._queued[family] >= self._queue_max:
            raise errors.RateLimited(
                f"Too many requests for {family} models: {self._busy[family]} running, {self._queued[family]} waiting",
                retry_after=self._retry_after(family),
                code="queue_full",
            )
        waiter = _Waiter(family, self._tag(family, key))
        self._waiters.append(waiter)
        self._queued[family] += 1
        queued = time.monotonic()
        try:
            async with asyncio.timeout(self._queue_timeout):
                await waiter.future
        except TimeoutError:
            if not waiter.granted:
                self._dequeue(waiter)
                if waiter.future.done() and not waiter.future.cancelled() and (failure := waiter.future.exception()):
                    raise failure from None  # drained at the same moment: the 503 says more than a timeout
                raise errors.RateLimited(
                    f"Waited {self._queue_timeout:g}s for a {family} slot",
                    retry_after=self._retry_after(family),
                    code="queue_timeout",
                ) from None
            # Else the slot came at the last moment, before the timeout could be seen: use it.
        except BaseException:  # cancelled by the request, or the 503 of a drain
            if waiter.granted:
                self.release(family)  # cancelled after the grant: the slot goes to the next waiter
            else:
                self._dequeue(waiter)
            raise
        self._bus.note(QueueWait(family, time.monotonic() - queued))

    def release(self, family: str) -> None:
        """Give back a slot taken by `admit` and hand it (or one it frees under the total) to the next waiter."""
        if self._busy[family] <= 0:
            # A caller's bug: counting it would go negative and let a waiter in over the limit.
            log.error("admission_release_unheld", family=family)
            return
        self._busy[family] -= 1
        self._busy_total -= 1
        self._grant()

    def turn_took(self, family: str, seconds: float) -> None:
        """A turn of `family` held its slot this long (the whole turn, clean-up included)."""
        previous = self._turn_seconds.get(family, seconds)
        self._turn_seconds[family] = 0.8 * previous + 0.2 * seconds

    def drain(self) -> None:
        """Stop admitting: queued requests get 503 now, and so does every later `admit`. Slots held stay held."""
        self._draining = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(_shutting_down())
        self._waiters.clear()
        self._queued.clear()

    # --- inside ----------------------------------------------------------------------------------------------------

    def _can_run(self, family: str) -> bool:
        return self._busy[family] < self._limit(family) and self._busy_total < self._total

    def _take_slot(self, family: str) -> None:
        self._busy[family] += 1
        self._busy_total += 1

    def _dequeue(self, waiter: _Waiter) -> None:
        # The one place a waiter leaves the queue, so `_queued` always matches `_waiters` (whoever gets there first).
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            self._queued[waiter.family] -= 1

    def _grant(self) -> None:
        while True:
            # A cancelled request's future is cancelled before its task runs its clean-up: it is no candidate.
            for waiter in [w for w in self._waiters if w.future.done()]:
                self._dequeue(waiter)
            runnable = [w for w in self._waiters if self._can_run(w.family)]
            if not runnable:
                return
            waiter = min(runnable, key=lambda w: w.tag)  # min() keeps the first of equal tags: FIFO among them
            self._dequeue(waiter)
            self._take_slot(waiter.family)
            self._served[waiter.family] = max(self._served.get(waiter.family, 0.0), waiter.tag)
            waiter.future.set_result(None)

    def _tag(self, family: str, key: str) -> float:
        tag = max(self._served.get(family, 0.0), self._tags.get((family, key), 0.0)) + 1.0
        self._tags[(family, key)] = tag
        return tag

    def _retry_after(self, family: str) -> float:
        # Everyone ahead plus this request, served `limit` at a time, each taking about one recent turn.
        per_turn = self._turn_seconds.get(family, DEFAULT_TURN_SECONDS)
        ahead = self._queued[family] + 1
        return min(60.0, max(1.0, per_turn * ahead / self._limit(family)))
