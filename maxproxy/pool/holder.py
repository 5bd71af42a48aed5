"""A `Holder` stands for one worker process of the pool, from the moment its start begins until its process is
reaped, apart from the pool's bookkeeping (as asyncpg keeps a holder per connection): its one `WorkerState`, the
conversation it holds between turns, since when it is idle, the turn it is lent for (a holder is its worker's
observer: it publishes the worker's turn events on the bus under that turn's `TurnRef`, and nowhere between turns),
its fitness (crashed, a turn that ended in error, `worker_max_turns`, `worker_max_rss_mb` → a `RetireReason`) and its
reset (finish an unfinished turn, then rewind the conversation to nothing). Every state change is a method that
checks the state it leaves, so a worker is never lent twice or parked while lent; every count the pool reports
derives from the holders' states."""

from __future__ import annotations

import asyncio
import enum
import time

from maxproxy import errors
from maxproxy.bus import Bus, TurnRef
from maxproxy.claude.command import Launch
from maxproxy.claude.control import CONTROL_TIMEOUT
from maxproxy.claude.events import TurnEvent
from maxproxy.claude.worker import Worker
from maxproxy.settings import Settings


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # its process is starting (or is up and not yet handed to the request that started it)
    IDLE = "idle"  # clean, ready for any conversation
    LENT = "lent"  # on loan to a request (a `Lease`)
    RETURNING = "returning"  # being taken back (finish, check, rewind) by a task the pool owns
    HOLDING = "holding"  # idle, keeping a conversation for its next turn
    WAITING_FOR_TOOLS = "waiting_for_tools"  # holding a turn stopped at tool calls its client answers
    STOPPING = "stopping"  # retired: its process is being stopped and reaped


S = WorkerState


class RetireReason(enum.StrEnum):
    """Why a worker was stopped: the label of `pool.counts["retired:<reason>"]` (and of the metrics)."""

    CRASHED = "crashed"  # died on its own while lent
    EXITED_IDLE = "exited_idle"  # died on its own between turns
    TURN_ERROR = "turn_error"
    MAX_TURNS = "max_turns"
    RSS = "rss"
    REPLAYED_HISTORY = "replayed_history"  # holds history it cannot rewind without a trace
    RESET_FAILED = "reset_failed"
    INTERRUPT_TIMEOUT = "interrupt_timeout"
    IDLE = "idle"  # idle (or holding a conversation) past `idle_timeout`
    ROOM = "room"  # stopped to make room under `max_workers`
    SUPERSEDED = "superseded"  # its conversation is held by another worker now
    FORGOTTEN = "forgotten"  # its conversation was deleted
    RECLAIM_FAILED = "reclaim_failed"
    ABANDONED = "abandoned"  # started on a resumed session for a request that left
    SHUTDOWN = "shutdown"
    FREE_FAILED = "free_failed"
    TAKE_BACK_ERROR = "take_back_error"  # a bug in the clean-up: the worker is not trusted


class Holder:
    __slots__ = (
        "_bus",
        "_worker",
        "cancelling",
        "conversation",
        "idle_since",
        "launch",
        "owned",
        "state",
        "task",
        "turn",
    )

    def __init__(self, launch: Launch, bus: Bus, *, owned: bool) -> None:
        self.launch = launch
        # A start for the warm set is nobody's: it may be cancelled (once) to make room. A start a request asked for
        # belongs to that request: nobody else cancels it, and it is handed to that request alone.
        self.owned = owned
        self.cancelling = False
        self.task: asyncio.Task[Worker | errors.ProxyError] | None = None  # the start
        self.state = S.STARTING
        self.conversation: str | None = None
        self.idle_since = time.monotonic()
        self._worker: Worker | None = None
        self._bus = bus
        self.turn: TurnRef | None = None

    def __repr__(self) -> str:
        name = self._worker.name if self._worker is not None else "-"
        return f"<Holder {name} {self.state} {self.launch.model} {self.conversation or ''}>"

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            raise RuntimeError(f"{self!r} has no process yet")
        return self._worker

    @property
    def has_process(self) -> bool:
        return self._worker is not None

    def is_in(self, *states: WorkerState) -> bool:
        """Whether the state is one of these (read afresh after an await)."""
        return self.state in states

    def __call__(self, event: TurnEvent) -> None:
        """The worker's observer: its turn events go to the bus under the turn it is lent for."""
        if self.turn is not None:
            self._bus.publish(self.turn, event)

    # --- transitions -----------------------------------------------------------------------------------------------

    def _leave(self, *states: WorkerState) -> None:
        if self.state not in states:
            raise RuntimeError(f"{self!r}: not {'/'.join(states)}")

    def up(self, worker: Worker) -> None:
        """Its process answered `initialize` (it stays STARTING until it is parked or lent)."""
        self._leave(S.STARTING)
        self._worker = worker

    def lend(self, turn: TurnRef) -> None:
        self._leave(S.STARTING, S.IDLE, S.HOLDING, S.WAITING_FOR_TOOLS, S.RETURNING)
        self._need_process()
        self.state, self.turn, self.conversation = S.LENT, turn, None

    def take_back(self) -> None:
        self._leave(S.LENT)
        self.state = S.RETURNING

    def park(self) -> None:
        self._leave(S.STARTING, S.RETURNING)
        self._need_process()
        self._rest(S.IDLE, None)

    def hold(self, conversation: str) -> None:
        self._leave(S.RETURNING)
        self._rest(S.WAITING_FOR_TOOLS if self.worker.waiting else S.HOLDING, conversation)

    def reclaim(self) -> None:
        """Emptied for another conversation (rewound by the reclaiming request, then lent or retired)."""
        self._leave(S.HOLDING)
        self.state, self.conversation = S.RETURNING, None

    def free(self) -> None:
        """Its client never brought the tool results: the turn is ended and the worker made clean."""
        self._leave(S.WAITING_FOR_TOOLS)
        self.state, self.conversation = S.RETURNING, None

    def retire(self) -> None:
        self._leave(S.STARTING, S.IDLE, S.LENT, S.RETURNING, S.HOLDING, S.WAITING_FOR_TOOLS)
        self._need_process()
        self.state, self.turn, self.conversation = S.STOPPING, None, None

    def _need_process(self) -> None:
        if self._worker is None:
            raise RuntimeError(f"{self!r} has no process yet")

    def _rest(self, state: WorkerState, conversation: str | None) -> None:
        self.state, self.turn, self.conversation = state, None, conversation
        self.idle_since = time.monotonic()

    # --- fitness and reset -----------------------------------------------------------------------------------------

    async def recover(self, settings: Settings, *, keep: bool = False) -> RetireReason | None:
        """Make the worker fit for an unrelated conversation (or, with `keep`, for its own next turn); the reason it
        is not, or None."""
        worker = self.worker
        if not worker.alive:
            return RetireReason.CRASHED
        if keep and worker.waiting:
            return None  # the turn goes on when the client brings the tool results
        if worker.in_turn:
            try:
                await worker.finish(settings.interrupt_timeout)
            except errors.ProxyError:
                return RetireReason.INTERRUPT_TIMEOUT
        result = worker.last_result
        if result is not None and result.is_error and not worker.interrupted:
            return RetireReason.TURN_ERROR
        if worker.turns >= settings.worker_max_turns:
            return RetireReason.MAX_TURNS
        limit = settings.worker_max_rss_mb * 1024 * 1024
        if limit and worker.rss_bytes() > limit:
            return RetireReason.RSS
        if keep:
            return None
        return await self.rewind()

    async def rewind(self) -> RetireReason | None:
        """Empty the conversation (rewind its prompts); the reason it cannot be, or None."""
        worker = self.worker
        if not worker.resettable:
            return RetireReason.REPLAYED_HISTORY
        try:
            if not await asyncio.wait_for(worker.reset(), CONTROL_TIMEOUT):
                return RetireReason.RESET_FAILED
        except (errors.ProxyError, TimeoutError):
            return RetireReason.RESET_FAILED
        return None
