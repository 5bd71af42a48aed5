"""The pool's upkeep, as decisions over the holders that the pool's maintainer task carries out (every
`MAINTAIN_EVERY` seconds at most, and whenever something changes): keep `min_idle` workers ready or starting for
each warm model within `max_workers` (`shortfall`); retire idle workers beyond that after `idle_timeout`, and held
conversations left alone that long — retired, not rewound, so that their CLI sessions stay resumable — and end
turns whose client never brought the tool results after `tool_wait` (`expired`); and back off when workers keep
failing to start (`Backoff`: after `FAILURES_BEFORE_BACKOFF` in a row, 1 s doubling up to `MAX_BACKOFF`, during
which requests needing a new worker get 503 with `Retry-After` and `/health` is not ready)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Literal

from maxproxy.claude.command import Launch
from maxproxy.pool.holder import Holder, RetireReason, WorkerState
from maxproxy.settings import Settings

FAILURES_BEFORE_BACKOFF = 3
MAX_BACKOFF = 60.0
MAINTAIN_EVERY = 5.0

FREE: Literal["free"] = "free"  # end the waiting turn and make the worker clean (it is not retired)


def period(settings: Settings) -> float:
    """How long the maintainer sleeps at most: short enough to see every timeout soon after it passes."""
    return min(MAINTAIN_EVERY, settings.idle_timeout, settings.tool_wait)


def expired(
    holders: Iterable[Holder], settings: Settings, warm: Sequence[Launch], now: float
) -> list[tuple[Holder, RetireReason | Literal["free"]]]:
    """What to do with the idle and holding workers whose time is up (or that died between turns)."""
    out: list[tuple[Holder, RetireReason | Literal["free"]]] = []
    idle: dict[Launch, list[Holder]] = {}
    held: list[Holder] = []
    for holder in holders:
        if holder.state is WorkerState.IDLE:
            idle.setdefault(holder.launch, []).append(holder)
        elif holder.state in (WorkerState.HOLDING, WorkerState.WAITING_FOR_TOOLS):
            held.append(holder)
    for launch, workers in idle.items():
        left = len(workers)
        keep = settings.min_idle if launch in warm else 0
        for holder in sorted(workers, key=lambda h: h.idle_since):
            if not holder.worker.alive:
                out.append((holder, RetireReason.EXITED_IDLE))
                left -= 1
            elif left > keep and now - holder.idle_since > settings.idle_timeout:
                out.append((holder, RetireReason.IDLE))
                left -= 1
    for holder in held:
        alive = holder.worker.alive
        if holder.state is WorkerState.WAITING_FOR_TOOLS and alive:
            if now - holder.idle_since > settings.tool_wait:
                out.append((holder, FREE))  # a late follow-up replays the conversation
        elif not alive or now - holder.idle_since > settings.idle_timeout:
            out.append((holder, RetireReason.IDLE if alive else RetireReason.EXITED_IDLE))
    return out


def shortfall(holders: Sequence[Holder], settings: Settings, warm: Sequence[Launch]) -> list[Launch]:
    """The warm set's starts to begin now: up to `min_idle` ready or starting per warm model, within `max_workers`
    (every holder is a process, or one about to be)."""
    room = settings.max_workers - len(holders)
    starts: list[Launch] = []
    for launch in warm:
        have = sum(
            1
            for h in holders
            if h.launch == launch and (h.state is WorkerState.IDLE or (h.state is WorkerState.STARTING and not h.owned))
        )
        while have < settings.min_idle and room > 0:
            starts.append(launch)
            have += 1
            room -= 1
    return starts


class Backoff:
    """Consecutive start failures, and until when starting is held back."""

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0
        self.last_error: str | None = None

    @property
    def seconds(self) -> float:
        return max(0.0, self.until - time.monotonic())

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0

    def failed(self, message: str) -> float | None:
        """Count a failure; the back-off it starts (seconds), if any."""
        self.failures += 1
        self.last_error = message
        if self.failures < FAILURES_BEFORE_BACKOFF:
            return None
        delay = min(MAX_BACKOFF, 2.0 ** (self.failures - FAILURES_BEFORE_BACKOFF))
        self.until = time.monotonic() + delay
        return delay
