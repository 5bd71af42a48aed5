"""A `Lease` is a worker on loan to one request, for the life of its `pool.acquire(...)` context: it sets the turn's
options and tools, runs one turn (or goes on with the one that waits for tool results), interrupts it, asks the pool
to keep the worker for the conversation's next turn, and shows the few facts about the worker the turn driver and
the sessions need (read only). When the context exits the pool detaches it: the worker goes back (and may be lent to
someone else at once), so any later use of the lease is a programming error and raises."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from maxproxy import errors, tools
from maxproxy.claude.command import Options
from maxproxy.claude.events import TurnEvent
from maxproxy.claude.watchdog import Watchdog
from maxproxy.claude.worker import Worker


class ResumeFailed(errors.CLIUnavailable):
    """A worker could not be started on a recorded CLI session (transcript gone or unreadable), or no worker holds
    the conversation (or its tool-waiting turn) any more: the caller replays the conversation."""


class Lease:
    __slots__ = ("_worker", "kept_for", "name")

    def __init__(self, worker: Worker) -> None:
        self._worker: Worker | None = worker
        self.name = worker.name
        self.kept_for: str | None = None  # read by the pool when the lease ends

    def _live(self) -> Worker:
        if self._worker is None:
            raise RuntimeError(f"lease on worker {self.name} used after it was released")
        return self._worker

    def detach(self) -> None:
        """The pool takes the worker back: from now on the lease only raises."""
        self._worker = None

    @property
    def released(self) -> bool:
        return self._worker is None

    # --- what the request does with it -----------------------------------------------------------------------------

    def keep(self, conversation: str) -> None:
        """After this turn, keep the worker (and its conversation) for the conversation's next turn."""
        self._live()
        self.kept_for = conversation

    async def apply(self, options: Options, toolset: tools.Toolset) -> None:
        worker = self._live()
        await worker.apply(options)
        await worker.offer(toolset)

    def turn(
        self,
        lines: Sequence[dict[str, Any]],
        watchdog: Watchdog,
        *,
        tick: float | None = None,
        results: dict[str, str] | None = None,
    ) -> AsyncGenerator[TurnEvent | None, None]:
        worker = self._live()
        if results is not None and not worker.tools.matches(results):
            raise ResumeFailed("The worker no longer waits for these tool results")
        if results is None and worker.in_turn:
            raise ResumeFailed("The worker waits for tool results this request does not bring")
        return worker.turn(lines, watchdog, tick=tick, results=results)

    async def interrupt(self) -> None:
        await self._live().interrupt()

    # --- what it shows of the worker ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._live().pid

    @property
    def in_turn(self) -> bool:
        """The turn has not reached its result (stopped early, or waiting for tool results)."""
        return self._live().in_turn

    @property
    def waiting(self) -> bool:
        """The turn stopped at tool calls that the client answers."""
        return self._live().waiting

    @property
    def interrupted(self) -> bool:
        """maxproxy interrupted the turn on purpose."""
        return self._live().interrupted

    @property
    def turn_cost(self) -> float:
        """USD of the last turn."""
        return self._live().turn_cost

    @property
    def session_id(self) -> str | None:
        """The CLI session the worker runs (its transcript)."""
        return self._live().session_id
