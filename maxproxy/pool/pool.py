"""The pool owns every CLI worker and lends them to requests: `async with pool.acquire(launch, family) as lease`.

Admission first: a request needs a slot, under its model family's limit and the global `max_workers`; over them it
waits in one queue (bounded per family by `queue_max` and in time by `queue_timeout`, then 429 with `Retry-After`),
and a cancelled waiter gives its place back. The queue is fair between API keys (start-time fair queuing): each
request gets a tag one past the later of its key's previous tag and the tag last served, and the lowest tag goes
first, so a key that floods the queue does not starve the others — two busy keys get a slot in turn.

Then a worker: an idle warm one started with the same `Launch`, else a new one (room is made by stopping the least
recently used idle worker), so processes never exceed `max_workers`. When the request is done — however it ended —
a pool-owned task takes the worker back: it stays with its conversation (or with its turn that waits for the
client's tool results), or an unfinished turn is interrupted and drained (or the worker killed when that takes
longer than `interrupt_timeout`), the conversation is rewound to nothing, and the worker goes idle again — unless it
crashed, ended its turn with an error, served `worker_max_turns` turns, grew past `worker_max_rss_mb`, or held a
replayed history that cannot be rewound without a trace: then it is replaced by a fresh process.

A maintainer task keeps `min_idle` workers ready for each of `warm_models`, retires idle workers after
`idle_timeout`, and backs off (503 + `Retry-After`, `/health` not ready) when workers keep failing to start. Worker
pids are recorded under the state directory so that a later start kills what a crashed maxproxy left behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from maxproxy import errors, tools
from maxproxy.bus import Alert, Bus, QueueWait, TurnEnd, TurnRef
from maxproxy.claude.command import Launch, Options
from maxproxy.claude.events import TurnEvent
from maxproxy.claude.worker import CONTROL_TIMEOUT, Watchdog, Worker
from maxproxy.settings import Model, Settings

log = structlog.get_logger("maxproxy.pool")

FAILURES_BEFORE_BACKOFF = 3
MAX_BACKOFF = 60.0
MAINTAIN_EVERY = 5.0


class Lease:
    """A worker on loan to one request: set its per-turn options and tools, run one turn (or go on with the one that
    waits for tool results), interrupt it."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.kept_for: str | None = None

    def keep(self, conversation: str) -> None:
        """After this turn, keep the worker (and its conversation) for the conversation's next turn."""
        self.kept_for = conversation

    async def apply(self, options: Options, toolset: tools.Toolset) -> None:
        await self.worker.apply(options)
        await self.worker.offer(toolset)

    def turn(
        self,
        lines: Sequence[dict[str, Any]],
        watchdog: Watchdog,
        *,
        tick: float | None = None,
        results: dict[str, str] | None = None,
    ) -> AsyncGenerator[TurnEvent | None, None]:
        if results is not None and not self.worker.tools.matches(results):
            raise ResumeFailed("The worker no longer waits for these tool results")
        if results is None and self.worker.in_turn:
            raise ResumeFailed("The worker waits for tool results this request does not bring")
        return self.worker.turn(lines, watchdog, tick=tick, results=results)

    async def interrupt(self) -> None:
        await self.worker.interrupt()


class ResumeFailed(errors.CLIUnavailable):
    """A worker could not be started on a recorded CLI session (transcript gone or unreadable)."""


class _Tap:
    """Where a worker's turn events go: the bus, under the turn it is lent for (nowhere between turns)."""

    __slots__ = ("bus", "ref")

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.ref: TurnRef | None = None

    def __call__(self, event: TurnEvent) -> None:
        if self.ref is not None:
            self.bus.publish(self.ref, event)


class _Waiter:
    __slots__ = ("family", "future", "tag")

    def __init__(self, family: str, tag: float) -> None:
        self.family = family
        self.tag = tag
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _Start:
    """A worker start in progress. A start for the warm set is nobody's: it may be cancelled (once) to make room. A
    start a request asked for belongs to that request: nobody else cancels it, it is handed to that request alone, and
    if the request leaves meanwhile the worker joins the idle set (or, holding a resumed session, is stopped)."""

    __slots__ = ("cancelling", "launch", "owned")

    def __init__(self, launch: Launch, *, owned: bool) -> None:
        self.launch = launch
        self.owned = owned
        self.cancelling = False


class Pool:
    def __init__(self, settings: Settings, bus: Bus | None = None, models: Mapping[str, Model] | None = None) -> None:
        self.settings = settings
        self.models = models if models is not None else settings.model_table  # the served table (`catalog`)
        self.bus = bus or Bus()
        self._live: set[Worker] = set()  # processes counted against max_workers: idle, lent, being taken back
        self._taps: dict[Worker, _Tap] = {}
        self._idle: dict[Launch, list[Worker]] = {}
        self._held: dict[str, Worker] = {}  # idle workers that still hold a conversation, by conversation id
        self._starting: dict[asyncio.Task[Worker | errors.ProxyError], _Start] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._returns: set[asyncio.Task[None]] = set()
        self._busy: collections.Counter[str] = collections.Counter()
        self._busy_total = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._queued: collections.Counter[str] = collections.Counter()
        self._served: dict[str, float] = {}  # family → the tag served last (the fair queue's clock)
        self._tags: dict[tuple[str, str], float] = {}  # (family, key) → the key's latest tag
        self._turn_seconds: dict[str, float] = {}
        self._failures = 0
        self._backoff_until = 0.0
        self.last_error: str | None = None
        self.draining = False
        self._closed = False
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # a worker was parked or a start ended: `warm` may have changed
        self._changed = asyncio.Event()  # replaced on every change that can make room (see `_notify`)
        self._maintainer: asyncio.Task[None] | None = None
        self.counts: collections.Counter[str] = collections.Counter()  # spawned, recycled:<reason>, ...

    # --- state ---------------------------------------------------------------------------------------------------

    @property
    def busy(self) -> int:
        return self._busy_total

    @property
    def idle(self) -> int:
        return sum(len(workers) for workers in self._idle.values()) + len(self._held)

    @property
    def starting(self) -> int:
        return len(self._starting)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def queue_depths(self) -> dict[str, int]:
        return {family: n for family, n in self._queued.items() if n}

    def states(self) -> dict[str, int]:
        """Worker processes by state."""
        waiting = sum(1 for w in self._held.values() if w.waiting)
        return {
            "busy": self._busy_total,
            "idle": sum(len(workers) for workers in self._idle.values()),
            "holding": len(self._held) - waiting,  # idle, keeping a conversation for its next turn
            "waiting_for_tools": waiting,
            "starting": len(self._starting),
            "stopping": len(self._stopping),
        }

    @property
    def backoff_seconds(self) -> float:
        return max(0.0, self._backoff_until - time.monotonic())

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._live)

    def sessions(self) -> list[str]:
        """The CLI sessions of live workers (their transcripts are in use)."""
        return [w.session_id for w in self._live if w.session_id]

    def _processes(self) -> int:
        # Processes being stopped count too: max_workers bounds what runs, not only what is in use.
        return len(self._live) + len(self._starting) + len(self._stopping)

    def _warm_launches(self) -> list[Launch]:
        # A warm model the CLI did not list after all is not served, so nobody would use its workers: skip it.
        table = self.models
        return [Launch(model=table[name].cli) for name in dict.fromkeys(self.settings.warm_models) if name in table]

    # --- life cycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweep_leftovers()
        self._maintainer = asyncio.create_task(self._maintain(), name="pool-maintainer")

    @property
    def warm(self) -> bool:
        """Every warm model has its `min_idle` workers ready (or is serving)."""
        for launch in self._warm_launches():
            ready = len(self._idle.get(launch, []))
            if ready < self.settings.min_idle and not (self._busy_total and ready):
                return False
        return True

    async def wait_warm(self, timeout: float) -> bool:
        """Wait until `warm` (False when `timeout` passed first, e.g. the CLI cannot start)."""
        try:
            async with asyncio.timeout(timeout):
                while not self.warm:
                    self._settled.clear()
                    await self._settled.wait()
        except TimeoutError:
            return self.warm
        return True

    def drain(self) -> None:
        """Stop taking work: new and queued requests get 503 while turns in flight finish."""
        self.draining = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(errors.Unavailable("maxproxy is shutting down", retry_after=5))
        self._waiters.clear()
        self._queued.clear()
        self._notify()  # requests waiting for room get their 503 too

    async def close(self) -> None:
        """Stop every worker (interrupting turns still running) and reap them all."""
        self.drain()
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [t for t in (self._maintainer,) if t is not None] + list(self._starting)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._returns:  # taking workers back is bounded by the interrupt and control timeouts
            await asyncio.wait(self._returns, timeout=self.settings.interrupt_timeout + CONTROL_TIMEOUT)
        for task in list(self._returns):
            task.cancel()
        await asyncio.gather(*self._returns, return_exceptions=True)
        if self._live:
            log.info("pool_stopping", workers=len(self._live))
        for worker in list(self._live):
            self._retire(worker, "shutdown")
        await asyncio.gather(*self._stopping, return_exceptions=True)

    # --- lending -------------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        launch: Launch,
        family: str,
        *,
        model: str = "",
        conversation: str | None = None,
        resume: str | None = None,
        key: str = "",
    ) -> AsyncIterator[Lease]:
        """A worker for one turn of API key `key`: the one still holding `conversation` if there is one, else one
        started on the CLI session `resume`, else a clean one."""
        await self._admit(family, key)
        worker: Worker | None = None
        lease: Lease | None = None
        try:
            worker = self._held.pop(conversation, None) if conversation else None
            if worker is not None and not worker.alive:
                self._retire(worker, "exited_idle")
                worker = None
            if worker is None and resume is not None:
                worker = await self._resume(launch, resume)
            elif worker is None and conversation is not None:
                # Nothing holds the conversation any more (reclaimed or retired meanwhile): the caller replays it.
                raise ResumeFailed("No worker holds the conversation any more")
            if worker is None:
                worker = await self._checkout(launch)
            lent = time.monotonic()
            request_id = structlog.contextvars.get_contextvars().get("request_id")
            ref = TurnRef(
                turn_id=uuid.uuid4().hex[:16],
                request_id=request_id,
                model=model or launch.model,
                worker=worker.name,
                key=key,
            )
            self._taps[worker].ref = ref
            lease = Lease(worker)
            yield lease
        finally:
            if worker is None:
                self._release(family)
            else:
                # Taken back by a task the pool owns: a cancelled request cannot cut the clean-up short.
                kept = lease.kept_for if lease is not None else None
                task = asyncio.create_task(
                    self._take_back(worker, family, ref, lent, kept), name=f"return-{worker.name}"
                )
                self._returns.add(task)
                task.add_done_callback(self._returns.discard)

    def _can_run(self, family: str) -> bool:
        return self._busy[family] < self.settings.limits.of(family) and self._busy_total < self.settings.max_workers

    def _take_slot(self, family: str) -> None:
        self._busy[family] += 1
        self._busy_total += 1

    def _release(self, family: str) -> None:
        self._busy[family] -= 1
        self._busy_total -= 1
        self._grant()

    def _grant(self) -> None:
        while True:
            for waiter in [w for w in self._waiters if w.future.done()]:
                self._waiters.remove(waiter)
            runnable = [w for w in self._waiters if self._can_run(w.family)]
            if not runnable:
                return
            waiter = min(runnable, key=lambda w: w.tag)  # min() keeps the first of equal tags: FIFO among them
            self._waiters.remove(waiter)
            self._queued[waiter.family] -= 1
            self._take_slot(waiter.family)
            self._served[waiter.family] = max(self._served.get(waiter.family, 0.0), waiter.tag)
            waiter.future.set_result(None)

    def _tag(self, family: str, key: str) -> float:
        tag = max(self._served.get(family, 0.0), self._tags.get((family, key), 0.0)) + 1.0
        self._tags[(family, key)] = tag
        return tag

    def _retry_after(self, family: str) -> float:
        per_turn = self._turn_seconds.get(family, 5.0)
        ahead = self._queued[family] + 1
        return min(60.0, max(1.0, per_turn * ahead / self.settings.limits.of(family)))

    async def _admit(self, family: str, key: str) -> None:
        if self.draining:
            raise errors.Unavailable("maxproxy is shutting down", retry_after=5)
        if self._can_run(family) and not any(w.family == family for w in self._waiters):
            self._take_slot(family)
            self._served[family] = self._tag(family, key)
            self.bus.note(QueueWait(family, 0.0))
            return
        if self._queued[family] >= self.settings.queue_max:
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
            async with asyncio.timeout(self.settings.queue_timeout):
                await waiter.future
            self.bus.note(QueueWait(family, time.monotonic() - queued))
        except BaseException as exc:
            granted = waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None
            if not granted and waiter in self._waiters:
                self._waiters.remove(waiter)
                self._queued[family] -= 1
            if isinstance(exc, TimeoutError):
                if granted:
                    return  # the slot came at the last moment: use it
                raise errors.RateLimited(
                    f"Waited {self.settings.queue_timeout:g}s for a {family} slot",
                    retry_after=self._retry_after(family),
                    code="queue_timeout",
                ) from None
            if granted:
                self._release(family)  # cancelled after the grant: give the slot on
            raise

    async def _checkout(self, launch: Launch) -> Worker:
        """An idle worker for this launch: one already warm, one the warm set is about to have, an emptied held one, or
        a new one started for this request."""
        while True:
            idle = self._idle.get(launch)
            while idle:
                worker = idle.pop()
                if worker.alive:
                    self._wake.set()  # the maintainer refills the warm set
                    return worker
                self._retire(worker, "exited_idle")
            if self.draining:
                raise errors.Unavailable("maxproxy is shutting down", retry_after=5)
            warming = [t for t, s in self._starting.items() if s.launch == launch and not s.owned and not s.cancelling]
            if warming:
                # A start for the warm set is under way: it is parked idle when it is up (or cancelled for room).
                await asyncio.wait(warming, return_when=asyncio.FIRST_COMPLETED)
                continue
            if (reclaimed := await self._reclaim(launch)) is not None:
                return reclaimed
            if self._idle.get(launch):
                continue  # a worker was parked while the held ones were looked at
            return await self._start_for_request(launch)

    async def _resume(self, launch: Launch, session: str) -> Worker:
        if session in self.sessions():
            # A live worker still runs that session (it was reclaimed for another conversation meanwhile): never two
            # processes on one session. The caller replays the conversation instead.
            raise ResumeFailed(f"CLI session {session} is in use by another worker")
        return await self._start_for_request(launch, resume=session)

    async def _start_for_request(self, launch: Launch, *, resume: str | None = None) -> Worker:
        """Start a worker that belongs to the calling request. Room is made and the start begun in one step (no
        await between them), so concurrent callers never push the processes past `max_workers`."""
        await self._make_room()
        if resume is None and self.backoff_seconds:
            raise errors.Unavailable(
                f"CLI workers keep failing to start: {self.last_error}",
                retry_after=self.backoff_seconds,
                code="cli_unavailable",
            )
        task = self._start(launch, resume=resume, owned=True)
        try:
            started = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The request left: a new worker joins the idle set once it is up; one on a resumed session (a
            # conversation's context nobody now continues) is stopped.
            task.add_done_callback(self._abandon if resume is not None else self._adopt_orphan)
            raise
        if isinstance(started, Worker):
            return started
        if resume is not None:
            raise ResumeFailed(f"Cannot resume CLI session {resume}: {started.message}")
        raise started

    async def _make_room(self) -> None:
        """Wait until one more process fits within max_workers: stop the least recently used idle worker (plain or
        holding a conversation), else cancel a start for the warm set (never one that a request waits for), and wait
        for what is stopping to be gone. Returns with room, and the caller starts its process before it awaits."""
        while self._processes() >= self.settings.max_workers:
            if self.draining:
                raise errors.Unavailable("maxproxy is shutting down", retry_after=5)
            changed = self._changed  # taken before looking, so that no change after the look is missed
            idle = [w for workers in self._idle.values() for w in workers] + list(self._held.values())
            if idle:
                self._retire(min(idle, key=lambda w: w.idle_since), "room")
            elif spare := next((t for t, s in self._starting.items() if not s.owned and not s.cancelling), None):
                self._starting[spare].cancelling = True  # once: a second cancel would cut its process's reaping short
                spare.cancel()
            if self._processes() >= self.settings.max_workers:
                await changed.wait()

    def _notify(self) -> None:
        """Wake everyone waiting in `_make_room`: a process is gone, a start ended, or a worker went idle."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _adopt(self, worker: Worker) -> None:
        self._live.add(worker)
        self._failures = 0
        self._backoff_until = 0.0
        self.counts["spawned"] += 1
        self._register(worker)

    def _start_failed(self, exc: errors.ProxyError) -> None:
        self._failures += 1
        self.last_error = exc.message
        self.counts["start_failed"] += 1
        if self._failures >= FAILURES_BEFORE_BACKOFF:
            delay = min(MAX_BACKOFF, 2.0 ** (self._failures - FAILURES_BEFORE_BACKOFF))
            self._backoff_until = time.monotonic() + delay
            log.error("pool_backoff", failures=self._failures, seconds=delay, error=exc.message)
            text = (
                f"CLI workers keep failing to start ({self._failures} in a row; retrying in {delay:g}s): {exc.message}"
            )
            self.bus.announce(Alert("crash_loop", text[:500]))

    def _hold(self, worker: Worker, conversation: str) -> None:
        self._rest(worker)
        previous = self._held.pop(conversation, None)
        if previous is not None:
            self._retire(previous, "superseded")
        self._held[conversation] = worker
        self._notify()  # a held worker can be reclaimed or stopped for room

    def holds(self, conversation: str) -> bool:
        return conversation in self._held

    def waiting(self, conversation: str) -> bool:
        """A worker holds the conversation's turn, stopped at tool calls its client has to answer."""
        worker = self._held.get(conversation)
        return worker is not None and worker.waiting

    def forget(self, conversation: str) -> None:
        """The conversation was deleted: its worker, if one still holds it, goes."""
        worker = self._held.pop(conversation, None)
        if worker is not None:
            self._retire(worker, "forgotten")

    async def _reclaim(self, launch: Launch) -> Worker | None:
        """Empty the least recently used worker that holds a conversation (a few ms of rewinds, against a start of
        ~0.3 s). Its conversation continues later from its client's history or, if it was retired, its session."""
        # A worker whose turn waits for tool results is not emptied: its client is about to go on with it.
        held = [(c, w) for c, w in self._held.items() if w.launch == launch and not w.waiting]
        while held:
            conversation, worker = min(held, key=lambda item: item[1].idle_since)
            held.remove((conversation, worker))
            if self._held.get(conversation) is not worker:
                continue
            del self._held[conversation]
            if worker.alive and worker.resettable and not await self._reset(worker):
                return worker
            self._retire(worker, "reclaim_failed" if worker.alive else "exited_idle")
        return None

    def _abandon(self, task: asyncio.Task[Worker | errors.ProxyError]) -> None:
        if not task.cancelled() and isinstance(worker := task.result(), Worker):
            self._retire(worker, "abandoned")

    def _adopt_orphan(self, task: asyncio.Task[Worker | errors.ProxyError]) -> None:
        """A worker started for a request that left: it joins the idle set."""
        if not task.cancelled() and isinstance(worker := task.result(), Worker):
            if self.draining:
                self._retire(worker, "shutdown")
            else:
                self._park(worker)

    def _rest(self, worker: Worker) -> None:
        worker.rest()
        if (tap := self._taps.get(worker)) is not None:
            tap.ref = None

    def _park(self, worker: Worker) -> None:
        self._settled.set()
        self._notify()
        self._rest(worker)
        launch = worker.launch or Launch(model="")
        self._idle.setdefault(launch, []).append(worker)

    def _retire(self, worker: Worker, reason: str) -> None:
        self._live.discard(worker)
        self._taps.pop(worker, None)
        for conversation, held in list(self._held.items()):
            if held is worker:
                del self._held[conversation]
        idle = self._idle.get(worker.launch or Launch(model=""), [])
        if worker in idle:
            idle.remove(worker)
        self.counts[f"retired:{reason}"] += 1
        log.info("worker_retired", worker=worker.name, pid=worker.pid, reason=reason, turns=worker.turns)
        task = worker.stop()
        self._stopping.add(task)

        def stopped(_: asyncio.Task[None]) -> None:
            self._stopping.discard(task)
            self._unregister(worker)
            self._notify()

        task.add_done_callback(stopped)
        self._wake.set()

    async def _take_back(self, worker: Worker, family: str, ref: TurnRef, lent: float, kept: str | None) -> None:
        outcome, reason = "ok", ""
        try:
            if worker.in_turn:
                outcome = "tool_calls" if kept is not None and worker.waiting else "interrupted"
            reason = await self._recover(worker, keep=kept is not None)
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except Exception as exc:  # never lose the worker or the slot to a bug in the clean-up
            log.exception("worker_take_back_failed", worker=worker.name)
            reason = f"take_back_error:{type(exc).__name__}"
        finally:
            result = worker.last_result
            if reason and reason != "shutdown":
                outcome = "killed" if outcome == "interrupted" else outcome
            if result is not None and result.is_error and not worker.interrupted:
                outcome = "error"
            elapsed = time.monotonic() - lent  # the whole turn, for TurnEnd and the Retry-After estimate
            self.bus.publish(ref, TurnEnd(outcome=outcome, seconds=round(elapsed, 3)))
            if reason or self._closed:
                self._retire(worker, reason or "shutdown")
            elif kept is not None:
                self._hold(worker, kept)
            else:
                self._park(worker)
            previous = self._turn_seconds.get(family, elapsed)
            self._turn_seconds[family] = 0.8 * previous + 0.2 * elapsed
            self._release(family)

    async def _recover(self, worker: Worker, *, keep: bool = False) -> str:
        """Make a worker fit for an unrelated conversation (or, with `keep`, for its own next turn); the reason it is
        not, or ""."""
        if not worker.alive:
            return "crashed"
        if keep and worker.waiting:
            return ""  # the turn goes on when the client brings the tool results
        if worker.in_turn:
            try:
                await worker.finish(self.settings.interrupt_timeout)
            except errors.ProxyError:
                return "interrupt_timeout"
        result = worker.last_result
        if result is not None and result.is_error and not worker.interrupted:
            return "turn_error"
        if worker.turns >= self.settings.worker_max_turns:
            return "max_turns"
        limit = self.settings.worker_max_rss_mb * 1024 * 1024
        if limit and worker.rss_bytes() > limit:
            return "rss"
        if keep:
            return ""
        return await self._reset(worker)

    async def _reset(self, worker: Worker) -> str:
        if not worker.resettable:
            return "replayed_history"
        try:
            if not await asyncio.wait_for(worker.reset(), CONTROL_TIMEOUT):
                return "reset_failed"
        except (errors.ProxyError, TimeoutError):
            return "reset_failed"
        return ""

    # --- upkeep --------------------------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            self._wake.clear()
            self._expire_idle()
            self._refill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), min(MAINTAIN_EVERY, self.settings.idle_timeout, self.settings.tool_wait)
                )

    def _expire_idle(self) -> None:
        now = time.monotonic()
        warm = set(self._warm_launches())
        for launch, workers in list(self._idle.items()):
            keep = self.settings.min_idle if launch in warm else 0
            for worker in sorted(workers, key=lambda w: w.idle_since):
                if not worker.alive:
                    self._retire(worker, "exited_idle")
                elif len(workers) > keep and now - worker.idle_since > self.settings.idle_timeout:
                    self._retire(worker, "idle")
        for conversation, worker in list(self._held.items()):
            if worker.waiting and worker.alive:
                if now - worker.idle_since > self.settings.tool_wait:
                    # The client never brought the tool results: end the turn and free the worker. A late
                    # follow-up replays the conversation.
                    del self._held[conversation]
                    log.info("tool_wait_expired", worker=worker.name, seconds=self.settings.tool_wait)
                    self._free(worker)
            # A held conversation left alone is retired, not rewound: its CLI session stays resumable.
            elif not worker.alive or now - worker.idle_since > self.settings.idle_timeout:
                del self._held[conversation]
                self._retire(worker, "idle" if worker.alive else "exited_idle")

    def _free(self, worker: Worker) -> None:
        """End a waiting turn (interrupt) and make its worker clean for other conversations, in a task the pool
        owns."""

        async def free() -> None:
            reason = "free_failed"
            try:
                reason = await self._recover(worker)
            finally:
                if reason or self._closed:
                    self._retire(worker, reason or "shutdown")
                else:
                    self._park(worker)

        task = asyncio.create_task(free(), name=f"free-{worker.name}")
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    def _refill(self) -> None:
        if self.draining or self.backoff_seconds:
            return
        for launch in self._warm_launches():
            have = len(self._idle.get(launch, [])) + sum(
                1 for s in self._starting.values() if s.launch == launch and not s.owned
            )
            while have < self.settings.min_idle and self._processes() < self.settings.max_workers:
                self._start(launch)
                have += 1

    def _start(
        self, launch: Launch, *, resume: str | None = None, owned: bool = False
    ) -> asyncio.Task[Worker | errors.ProxyError]:
        task = asyncio.create_task(self._start_worker(launch, resume, owned), name=f"start-{launch.model}")
        self._starting[task] = _Start(launch, owned=owned)
        task.add_done_callback(self._started)
        return task

    def _started(self, task: asyncio.Task[Worker | errors.ProxyError]) -> None:
        # A start's task ends only once its process is adopted (counted in `_live`) or reaped: the count never dips.
        self._starting.pop(task, None)
        self._settled.set()
        self._wake.set()
        self._notify()

    async def _start_worker(self, launch: Launch, resume: str | None, owned: bool) -> Worker | errors.ProxyError:
        """Start a worker: handed to the request that owns the start, else parked idle. The start-up error, if any,
        is returned (for the request that wanted the worker) rather than raised."""
        try:
            tap = _Tap(self.bus)
            worker = await Worker.start(self.settings, launch, resume=resume, observe=tap)
        except errors.ProxyError as exc:
            if resume is None:  # a session that cannot be resumed says nothing about the CLI's health
                self._start_failed(exc)
            return exc
        self._taps[worker] = tap
        self._adopt(worker)
        if owned:
            return worker  # its request is in flight: it gets the worker, draining or not
        if self.draining:
            self._retire(worker, "shutdown")
        else:
            self._park(worker)
        return worker

    # --- leftovers of a crashed maxproxy -------------------------------------------------------------------------

    @property
    def _registry(self) -> Path:
        return self.settings.state_path / "workers"

    def _register(self, worker: Worker) -> None:
        with contextlib.suppress(OSError):
            self._registry.mkdir(parents=True, exist_ok=True)
            (self._registry / str(worker.pid)).write_text(_start_time(worker.pid))

    def _unregister(self, worker: Worker) -> None:
        with contextlib.suppress(OSError):
            (self._registry / str(worker.pid)).unlink()

    def _sweep_leftovers(self) -> None:
        """Kill the process groups of workers a previous maxproxy recorded and never reaped (it crashed)."""
        if not self._registry.is_dir():
            return
        for entry in self._registry.iterdir():
            with contextlib.suppress(OSError, ValueError):
                pid = int(entry.name)
                recorded = entry.read_text()
                # pid and kernel start time together name exactly the process that was recorded, even after reuse.
                if recorded and recorded == _start_time(pid):
                    os.killpg(pid, signal.SIGKILL)
                    log.warning("leftover_worker_killed", pid=pid)
            with contextlib.suppress(OSError):
                entry.unlink()


def _start_time(pid: int) -> str:
    """The kernel's start time of a process: with the pid, it names one process even after pid reuse."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return raw[raw.rfind(")") + 2 :].split()[19]
