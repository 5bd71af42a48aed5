"""The pool owns every CLI worker and lends them to requests: `async with pool.acquire(launch, family) as lease`.
A request first gets a slot from the admission queue (`admission.Admission`), then a worker: the one still holding
its conversation, one started on its recorded CLI session, an idle warm one started with the same `Launch`, an
emptied held one (reclaimed: a few ms of rewinds against a start of ~0.3 s), else a new one — room is made by
stopping the least recently used idle worker, so processes never exceed `max_workers`. When the request is done —
however it ended — its lease is detached and a pool-owned task takes the worker back: it stays with its
conversation (or with its turn that waits for the client's tool results), or it is finished, checked and rewound
(`holder.Holder.recover`) and goes idle again, or it is retired with a `RetireReason` and replaced. Each worker's
state lives in its `Holder` alone; the counts (`states()`, `/health`, `/metrics`) derive from them. Upkeep
(`upkeep`) and the pid registry (`registry`) are their own modules.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from maxproxy import errors
from maxproxy.bus import Alert, Bus, TurnEnd, TurnRef
from maxproxy.claude.command import Launch, Options
from maxproxy.claude.control import CONTROL_TIMEOUT
from maxproxy.claude.worker import Worker
from maxproxy.pool import upkeep
from maxproxy.pool.admission import Admission
from maxproxy.pool.holder import Holder, RetireReason, WorkerState
from maxproxy.pool.lease import Lease, ResumeFailed
from maxproxy.pool.registry import Registry
from maxproxy.settings import Model, Settings

log = structlog.get_logger("maxproxy.pool")

S = WorkerState
HELD = (S.HOLDING, S.WAITING_FOR_TOOLS)


def _fits(holder: Holder, options: Options | None) -> bool:
    """The worker's CLI has these per-turn options already."""
    return options is not None and holder.worker.options == options


def _shutting_down() -> errors.Unavailable:
    return errors.Unavailable("maxproxy is shutting down", retry_after=5)


class Pool:
    def __init__(self, settings: Settings, bus: Bus, models: Mapping[str, Model]) -> None:
        self.settings = settings
        self.models = models  # the served model table (`catalog.Catalog`)
        self.bus = bus
        self.admission = Admission(
            settings.limits.of, settings.max_workers, settings.queue_max, settings.queue_timeout, self.bus
        )
        self._holders: list[Holder] = []  # every process, starting to reaped: what counts against max_workers
        self._returns: set[asyncio.Task[None]] = set()  # workers being taken back or freed
        self._backoff = upkeep.Backoff()
        self._registry = Registry(settings.state_path / "workers")
        self._closed = False
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # a worker was parked or a start ended: `warm` may have changed
        self._changed = asyncio.Event()  # replaced on every change that can make room (see `_notify`)
        self._maintainer: asyncio.Task[None] | None = None
        self.counts: collections.Counter[str] = collections.Counter()  # spawned, start_failed, retired:<reason>

    # --- inspection (read only) ------------------------------------------------------------------------------------

    def _count(self, *states: WorkerState) -> int:
        return sum(1 for h in self._holders if h.state in states)

    def states(self) -> dict[str, int]:
        """Worker processes by state (`busy` is the admitted requests, with or without a worker yet)."""
        by_state = self.by_state()
        return {
            "busy": self.admission.busy,
            "idle": by_state[S.IDLE],
            "holding": by_state[S.HOLDING],  # idle, keeping a conversation for its next turn
            "waiting_for_tools": by_state[S.WAITING_FOR_TOOLS],
            "starting": by_state[S.STARTING],
            "stopping": by_state[S.STOPPING],
        }

    def by_state(self) -> collections.Counter[WorkerState]:
        """Every process by its holder's state (the status page)."""
        return collections.Counter(h.state for h in self._holders)

    @property
    def busy(self) -> int:
        return self.admission.busy

    @property
    def idle(self) -> int:
        """Workers between turns: clean, or holding a conversation."""
        return self._count(S.IDLE, *HELD)

    @property
    def starting(self) -> int:
        return self._count(S.STARTING)

    @property
    def total(self) -> int:
        """CLI processes starting or up (what counts against `max_workers`, less those being stopped)."""
        return len(self._holders) - self._count(S.STOPPING)

    @property
    def queued(self) -> int:
        return self.admission.queued

    def queue_depths(self) -> dict[str, int]:
        return self.admission.depths()

    @property
    def draining(self) -> bool:
        return self.admission.draining

    @property
    def last_error(self) -> str | None:
        return self._backoff.last_error

    @property
    def backoff_seconds(self) -> float:
        return self._backoff.seconds

    def workers(self) -> list[Holder]:
        """The holders of live processes (up, and not retired), oldest first."""
        return [h for h in self._holders if h.has_process and h.state is not S.STOPPING]

    def held(self, conversation: str) -> Holder | None:
        """The holder keeping `conversation` between its turns, if any."""
        return next((h for h in self._holders if h.conversation == conversation and h.state in HELD), None)

    @property
    def settled(self) -> bool:
        """Nothing admitted, lent, taken back, started or stopped: every process is idle or holding."""
        return not self.admission.busy and all(h.state in (S.IDLE, *HELD) for h in self._holders)

    @property
    def pids(self) -> list[int]:
        return sorted(h.worker.pid for h in self.workers())

    def sessions(self) -> list[str]:
        """The CLI sessions of live workers (their transcripts are in use)."""
        return [h.worker.session_id for h in self.workers() if h.worker.session_id]

    def holds(self, conversation: str) -> bool:
        return self.held(conversation) is not None

    def waiting(self, conversation: str) -> bool:
        """A worker holds the conversation's turn, stopped at tool calls its client has to answer."""
        holder = self.held(conversation)
        return holder is not None and holder.state is S.WAITING_FOR_TOOLS

    def _warm_launches(self) -> list[Launch]:
        # A warm model the CLI did not list after all is not served, so nobody would use its workers: skip it.
        table = self.models
        return [Launch(model=table[name].cli) for name in dict.fromkeys(self.settings.warm_models) if name in table]

    # --- life cycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._registry.sweep()
        self._maintainer = asyncio.create_task(self._maintain(), name="pool-maintainer")

    @property
    def warm(self) -> bool:
        """Every warm model has its `min_idle` workers ready (or is serving)."""
        for launch in self._warm_launches():
            ready = sum(1 for h in self._holders if h.state is S.IDLE and h.launch == launch)
            if ready < self.settings.min_idle and not (self.admission.busy and ready):
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
        self.admission.drain()
        self._notify()  # requests waiting for room get their 503 too

    async def close(self) -> None:
        """Stop every worker (interrupting turns still running) and reap them all."""
        self.drain()
        self._closed = True
        starts = [h.task for h in self._holders if h.state is S.STARTING and h.task is not None]
        tasks: list[asyncio.Task[Any]] = [t for t in (self._maintainer,) if t is not None] + starts
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._returns:  # taking workers back is bounded by the interrupt and control timeouts
            await asyncio.wait(self._returns, timeout=self.settings.interrupt_timeout + CONTROL_TIMEOUT)
        for task in list(self._returns):
            task.cancel()
        await asyncio.gather(*self._returns, return_exceptions=True)
        live = [h for h in self._holders if h.has_process and h.state is not S.STOPPING]
        if live:
            log.info("pool_stopping", workers=len(live))
        for holder in live:
            self._retire(holder, RetireReason.SHUTDOWN)
        stopping = [h.worker.stop() for h in self._holders if h.state is S.STOPPING]
        await asyncio.gather(*stopping, return_exceptions=True)

    async def ask(self, subtype: str, **fields: Any) -> dict[str, Any] | None:
        """A control request that only reads the CLI's state (`get_usage`), sent to a worker between turns: an idle
        one, else one holding a conversation (a read changes neither), never one starting or in a turn. None when no
        worker is between turns now. The worker stays in the pool meanwhile: a turn may start on it, and the CLI
        answers the request beside the turn."""
        if self._closed:
            return None
        between = [h for h in self._holders if h.state is S.IDLE] or [h for h in self._holders if h.state is S.HOLDING]
        if not between:
            return None
        return await between[0].worker.control(subtype, **fields)

    # --- lending ---------------------------------------------------------------------------------------------------

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
        options: Options | None = None,
    ) -> AsyncIterator[Lease]:
        """A worker for one turn of API key `key`: the one still holding `conversation` if there is one, else one
        started on the CLI session `resume`, else a clean one — preferably one whose CLI already has the turn's
        `options` (changing them costs the CLI ~15-25 ms, measured). The lease is detached when the context exits."""
        await self.admission.admit(family, key)
        holder: Holder | None = None
        lease: Lease | None = None
        try:
            holder = self.held(conversation) if conversation else None
            if holder is not None and not holder.worker.alive:
                self._retire(holder, RetireReason.EXITED_IDLE)
                holder = None
            if holder is None and resume is not None:
                holder = await self._resume(launch, resume)
            elif holder is None and conversation is not None:
                # Nothing holds the conversation any more (reclaimed or retired meanwhile): the caller replays it.
                raise ResumeFailed("No worker holds the conversation any more")
            if holder is None:
                holder = await self._checkout(launch, options)
            if holder.state is S.STOPPING:
                raise _shutting_down()  # `close` retired it while it was being found
            lent = time.monotonic()
            request_id = structlog.contextvars.get_contextvars().get("request_id")
            ref = TurnRef(
                turn_id=uuid.uuid4().hex[:16],
                request_id=request_id,
                model=model or launch.model,
                worker=holder.worker.name,
                key=key,
            )
            holder.lend(ref)
            lease = Lease(holder.worker)
            yield lease
        finally:
            if lease is None:
                # No worker was lent (none found, or the request left while it was found): a holder found and not
                # lent yet goes back as it came.
                if holder is not None and holder.state is S.RETURNING:
                    self._park(holder)  # a reclaimed worker, rewound
                self.admission.release(family)
            else:
                assert holder is not None
                kept = lease.kept_for
                lease.detach()
                if holder.state is S.LENT:  # (not when `close` retired it under the request)
                    holder.take_back()
                # Taken back by a task the pool owns: a cancelled request cannot cut the clean-up short.
                task = asyncio.create_task(
                    self._take_back(holder, family, ref, lent, kept), name=f"return-{holder.worker.name}"
                )
                self._returns.add(task)
                task.add_done_callback(self._returns.discard)

    async def _take_back(self, holder: Holder, family: str, ref: TurnRef, lent: float, kept: str | None) -> None:
        worker = holder.worker
        outcome, reason = "ok", None
        try:
            if worker.in_turn:
                outcome = "tool_calls" if kept is not None and worker.waiting else "interrupted"
            if holder.state is S.STOPPING:
                reason = RetireReason.SHUTDOWN
            else:
                reason = await holder.recover(self.settings, keep=kept is not None)
        except asyncio.CancelledError:
            reason = RetireReason.SHUTDOWN
            raise
        except Exception as exc:  # never lose the worker or the slot to a bug in the clean-up
            log.exception("worker_take_back_failed", worker=worker.name, error=type(exc).__name__)
            reason = RetireReason.TAKE_BACK_ERROR
        finally:
            result = worker.last_result
            if reason is not None and reason is not RetireReason.SHUTDOWN:
                outcome = "killed" if outcome == "interrupted" else outcome
            if result is not None and result.is_error and not worker.interrupted:
                outcome = "error"
            elapsed = time.monotonic() - lent  # the whole turn, for TurnEnd and the Retry-After estimate
            self.bus.publish(ref, TurnEnd(outcome=outcome, seconds=round(elapsed, 3)))
            if reason is not None or self._closed:
                self._retire(holder, reason or RetireReason.SHUTDOWN)
            elif kept is not None:
                self._hold(holder, kept)
            else:
                self._park(holder)
            self.admission.turn_took(family, elapsed)
            self.admission.release(family)

    async def _checkout(self, launch: Launch, options: Options | None = None) -> Holder:
        """An idle worker for this launch: one already warm, one the warm set is about to have, an emptied held one, or
        a new one started for this request."""
        while True:
            # One whose CLI has the turn's options first (no `apply_flag_settings`), then the most recently parked:
            # its process is the warmest.
            ranked = sorted(self._idle(launch), key=lambda h: (_fits(h, options), h.idle_since), reverse=True)
            for holder in ranked:
                if holder.worker.alive:
                    self._wake.set()  # the maintainer refills the warm set
                    return holder
                self._retire(holder, RetireReason.EXITED_IDLE)
            if self.draining:
                raise _shutting_down()
            warming = [
                h.task
                for h in self._holders
                if h.state is S.STARTING and h.launch == launch and not h.owned and not h.cancelling and h.task
            ]
            if warming:
                # A start for the warm set is under way: it is parked idle when it is up (or cancelled for room).
                await asyncio.wait(warming, return_when=asyncio.FIRST_COMPLETED)
                continue
            if (reclaimed := await self._reclaim(launch, options)) is not None:
                return reclaimed
            if self._idle(launch):
                continue  # a worker was parked while the held ones were looked at
            return await self._start_for_request(launch)

    def _idle(self, launch: Launch) -> list[Holder]:
        return [h for h in self._holders if h.state is S.IDLE and h.launch == launch]

    async def _reclaim(self, launch: Launch, options: Options | None = None) -> Holder | None:
        """Empty the least recently used worker that holds a conversation. Its conversation continues later from its
        client's history or, if it was retired, its session. The holder comes back RETURNING (to be lent)."""
        # A worker whose turn waits for tool results is not emptied: its client is about to go on with it.
        held = [h for h in self._holders if h.state is S.HOLDING and h.launch == launch]
        # One whose CLI has the turn's options first, then the least recently used.
        for holder in sorted(held, key=lambda h: (not _fits(h, options), h.idle_since)):
            if holder.state is not S.HOLDING:
                continue  # lent, retired or superseded while an earlier one was rewound
            holder.reclaim()
            worker = holder.worker
            try:
                emptied = worker.alive and worker.resettable and await holder.rewind() is None
            except asyncio.CancelledError:
                self._retire(holder, RetireReason.RECLAIM_FAILED)  # the request left mid-rewind: half emptied
                raise
            if emptied:
                if holder.is_in(S.RETURNING):  # (not retired by `close` meanwhile)
                    return holder
                continue
            self._retire(holder, RetireReason.RECLAIM_FAILED if worker.alive else RetireReason.EXITED_IDLE)
        return None

    async def _resume(self, launch: Launch, session: str) -> Holder:
        if session in self.sessions():
            # A live worker still runs that session (it was reclaimed for another conversation meanwhile): never two
            # processes on one session. The caller replays the conversation instead.
            raise ResumeFailed(f"CLI session {session} is in use by another worker")
        return await self._start_for_request(launch, resume=session)

    async def _start_for_request(self, launch: Launch, *, resume: str | None = None) -> Holder:
        """Start a worker that belongs to the calling request. Room is made and the start begun in one step (no
        await between them), so concurrent callers never push the processes past `max_workers`."""
        await self._make_room()
        if resume is None and self.backoff_seconds:
            raise errors.Unavailable(
                f"CLI workers keep failing to start: {self.last_error}",
                retry_after=self.backoff_seconds,
                code="cli_unavailable",
            )
        holder = self._start(launch, resume=resume, owned=True)
        assert holder.task is not None
        try:
            started = await asyncio.shield(holder.task)
        except asyncio.CancelledError:
            # The request left: a new worker joins the idle set once it is up; one on a resumed session (a
            # conversation's context nobody now continues) is stopped.
            holder.task.add_done_callback(
                lambda _: self._orphaned(holder, None if resume is None else RetireReason.ABANDONED)
            )
            raise
        if isinstance(started, Worker):
            return holder
        if resume is not None:
            raise ResumeFailed(f"Cannot resume CLI session {resume}: {started.message}")
        raise started

    def _orphaned(self, holder: Holder, reason: RetireReason | None) -> None:
        """A worker started for a request that left: it joins the idle set (or, with `reason`, is stopped)."""
        if holder.state is not S.STARTING or not holder.has_process:
            return  # its start failed or was cancelled, or `close` retired it
        if reason is not None or self.draining:
            self._retire(holder, reason or RetireReason.SHUTDOWN)
        else:
            self._park(holder)

    async def _make_room(self) -> None:
        """Wait until one more process fits within max_workers: stop the least recently used idle worker (plain or
        holding a conversation), else cancel a start for the warm set (never one that a request waits for), and wait
        for what is stopping to be gone. Returns with room, and the caller starts its process before it awaits."""
        while len(self._holders) >= self.settings.max_workers:
            if self.draining:
                raise _shutting_down()
            changed = self._changed  # taken before looking, so that no change after the look is missed
            idle = [h for h in self._holders if h.state in (S.IDLE, *HELD)]
            spares = [
                h
                for h in self._holders
                if h.state is S.STARTING and not h.owned and not h.cancelling and h.task and not h.task.done()
            ]
            if idle:
                self._retire(min(idle, key=lambda h: h.idle_since), RetireReason.ROOM)
            elif spares:
                spare = spares[0]
                spare.cancelling = True  # once: a second cancel would cut its process's reaping short
                assert spare.task is not None
                spare.task.cancel()
            if len(self._holders) >= self.settings.max_workers:
                await changed.wait()

    def _notify(self) -> None:
        """Wake everyone waiting in `_make_room`: a process is gone, a start ended, or a worker went idle."""
        self._changed.set()
        self._changed = asyncio.Event()

    # --- state changes -------------------------------------------------------------------------------------------

    def _park(self, holder: Holder) -> None:
        holder.park()
        self._settled.set()
        self._notify()

    def _hold(self, holder: Holder, conversation: str) -> None:
        previous = self.held(conversation)
        holder.hold(conversation)
        if previous is not None:
            self._retire(previous, RetireReason.SUPERSEDED)
        self._notify()  # a held worker can be reclaimed or stopped for room

    def forget(self, conversation: str) -> None:
        """The conversation was deleted: its worker, if one still holds it, goes."""
        holder = self.held(conversation)
        if holder is not None:
            self._retire(holder, RetireReason.FORGOTTEN)

    def _retire(self, holder: Holder, reason: RetireReason) -> None:
        if holder.state is S.STOPPING:
            return  # a worker retires once (a clean-up can meet `close` retiring it)
        holder.retire()
        worker = holder.worker
        self.counts[f"retired:{reason}"] += 1
        log.info("worker_retired", worker=worker.name, pid=worker.pid, reason=str(reason), turns=worker.turns)
        task = worker.stop()

        def stopped(_: asyncio.Task[None]) -> None:
            with contextlib.suppress(ValueError):
                self._holders.remove(holder)
            self._registry.unregister(worker.pid)
            self._notify()

        task.add_done_callback(stopped)
        self._wake.set()

    def _free(self, holder: Holder) -> None:
        """End a waiting turn (interrupt) and make its worker clean for other conversations, in a task the pool
        owns."""
        holder.free()
        log.info("tool_wait_expired", worker=holder.worker.name, seconds=self.settings.tool_wait)

        async def free() -> None:
            reason: RetireReason | None = RetireReason.FREE_FAILED
            try:
                reason = await holder.recover(self.settings)
            finally:
                if reason is not None or self._closed:
                    self._retire(holder, reason or RetireReason.SHUTDOWN)
                else:
                    self._park(holder)

        task = asyncio.create_task(free(), name=f"free-{holder.worker.name}")
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    # --- upkeep and starts -----------------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            self._wake.clear()
            self._expire()
            self._refill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), upkeep.period(self.settings))

    def _expire(self) -> None:
        for holder, action in upkeep.expired(self._holders, self.settings, self._warm_launches(), time.monotonic()):
            if isinstance(action, RetireReason):
                self._retire(holder, action)
            else:
                self._free(holder)

    def _refill(self) -> None:
        if self.draining or self.backoff_seconds:
            return
        for launch in upkeep.shortfall(self._holders, self.settings, self._warm_launches()):
            self._start(launch)

    def _start(self, launch: Launch, *, resume: str | None = None, owned: bool = False) -> Holder:
        holder = Holder(launch, self.bus, owned=owned)
        self._holders.append(holder)
        holder.task = asyncio.create_task(self._start_worker(holder, resume), name=f"start-{launch.model}")
        holder.task.add_done_callback(lambda _: self._started(holder))
        return holder

    def _started(self, holder: Holder) -> None:
        # A start's task ends only once its process is up (its holder then counts it) or reaped: the count never dips.
        if not holder.has_process:
            self._holders.remove(holder)
        self._settled.set()
        self._wake.set()
        self._notify()

    async def _start_worker(self, holder: Holder, resume: str | None) -> Worker | errors.ProxyError:
        """Start a worker: handed to the request that owns the start, else parked idle. The start-up error, if any,
        is returned (for the request that wanted the worker) rather than raised."""
        try:
            worker = await Worker.start(self.settings, holder.launch, resume=resume, observe=holder)
        except errors.ProxyError as exc:
            if resume is None:  # a session that cannot be resumed says nothing about the CLI's health
                self._start_failed(exc)
            return exc
        holder.up(worker)
        self._backoff.succeeded()
        self.counts["spawned"] += 1
        self._registry.record(worker.pid)
        if holder.owned:
            return worker  # its request is in flight: it gets the worker, draining or not
        if self.draining:
            self._retire(holder, RetireReason.SHUTDOWN)
        else:
            self._park(holder)
        return worker

    def _start_failed(self, exc: errors.ProxyError) -> None:
        self.counts["start_failed"] += 1
        delay = self._backoff.failed(exc.message)
        if delay is not None:
            failures = self._backoff.failures
            log.error("pool_backoff", failures=failures, seconds=delay, error=exc.message)
            text = f"CLI workers keep failing to start ({failures} in a row; retrying in {delay:g}s): {exc.message}"
            self.bus.announce(Alert("crash_loop", text[:500]))
