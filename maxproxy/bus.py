"""The event bus: every turn's decoded CLI events fan out to subscribers (the Telegram notifier, metrics) without
ever slowing the turn. Each subscriber has a bounded queue; when it is full the item is dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import structlog

from maxproxy.claude.events import TurnEvent

log = structlog.get_logger("maxproxy.bus")


class TurnRef(msgspec.Struct, frozen=True):
    """Which turn an event belongs to."""

    turn_id: str
    request_id: str | None
    model: str
    worker: str
    key: str = ""  # the API key's name (which bot)


class TurnEnd(msgspec.Struct, frozen=True):
    """The last item of every turn, whatever happened (success, error, client gone, worker killed)."""

    outcome: str  # "ok", "error", "interrupted", "killed", "tool_calls" (the turn waits for the client's results)
    seconds: float


Item = tuple[TurnRef, TurnEvent | TurnEnd]


class Subscription:
    def __init__(self, bus: Bus, maxsize: int) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize)
        self.dropped = 0

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._items()

    async def _items(self) -> AsyncIterator[Item]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class Bus:
    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        subscription = Subscription(self, maxsize)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def publish(self, turn: TurnRef, item: TurnEvent | TurnEnd) -> None:
        for subscription in self._subscribers:
            try:
                subscription.queue.put_nowait((turn, item))
            except asyncio.QueueFull:
                subscription.dropped += 1
