"""A turn's time limits and the task that keeps them: `Watchdog` holds a turn's limits (no CLI output for
`inactivity` seconds, or the whole turn past `cap` seconds), and a `Watch` runs one timer task per watched turn that
puts sentinels on the worker's event queue — `Tick` after a keepalive interval without an event, `Expired` when a
limit passes — rather than a timer per event, which matters when every token is an event. Sentinels carry the id of
the watch that made them, so that one left over from an earlier turn is told apart and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from maxproxy import errors


class Watchdog:
    """Per-turn time limits: no CLI output for `inactivity` seconds, or the whole turn past `cap` seconds."""

    def __init__(self, inactivity: float, cap: float) -> None:
        self.inactivity = inactivity
        self.deadline = time.monotonic() + cap
        self.cap = cap


class Tick:
    """Sentinel: the watched turn has been silent for a keepalive interval."""

    def __init__(self, watch: int) -> None:
        self.watch = watch


class Expired:
    """Sentinel: the watched turn passed its inactivity limit or hard cap."""

    def __init__(self, watch: int, error: errors.Timeout) -> None:
        self.watch = watch
        self.error = error


class Watch:
    """The watch over one worker's turns: `watching` runs the timer for the events read inside it; `put` takes the
    sentinels, `activity` gives the time of the CLI's last output line (any line, not only turn events)."""

    def __init__(self, name: str, put: Callable[[Tick | Expired], None], activity: Callable[[], float]) -> None:
        self.name = name
        self._put = put
        self._activity = activity
        self._id = 0
        self._last_event = time.monotonic()

    def current(self, sentinel: Tick | Expired) -> bool:
        """Whether the sentinel comes from the watch running now (not one left over from an earlier watch)."""
        return sentinel.watch == self._id

    def saw_event(self) -> None:
        """A turn event was read: keepalive ticks count from it."""
        self._last_event = time.monotonic()

    @contextlib.asynccontextmanager
    async def watching(self, watchdog: Watchdog, tick: float | None = None) -> AsyncIterator[None]:
        """Run the watchdog (and keepalive ticks every `tick` seconds without an event) for the events read inside."""
        self._id += 1
        self._last_event = started = time.monotonic()
        task = asyncio.create_task(self._run(self._id, watchdog, tick, started), name=f"{self.name}-watch")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, watch: int, watchdog: Watchdog, tick: float | None, started: float) -> None:
        last_tick = 0.0
        while True:
            now = time.monotonic()
            # Silence counts from the later of the watch's start and the last output line: a worker that was quiet
            # for hours before this turn (or a hung turn being interrupted) gets the whole limit.
            deadline = min(max(self._activity(), started) + watchdog.inactivity, watchdog.deadline)
            if now >= deadline:
                if now >= watchdog.deadline:
                    error = errors.Timeout(f"The turn ran past the {watchdog.cap:g}s limit", code="turn_timeout")
                else:
                    message = f"The Claude Code CLI was silent for {watchdog.inactivity:g}s"
                    error = errors.Timeout(message, code="cli_inactivity_timeout")
                self._put(Expired(watch, error))
                return
            wake = deadline
            if tick is not None:
                due = max(self._last_event, last_tick) + tick
                if now >= due:
                    self._put(Tick(watch))
                    last_tick = now
                    continue
                wake = min(wake, due)
            await asyncio.sleep(wake - now)
