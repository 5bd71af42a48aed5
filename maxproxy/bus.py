"""The event bus: every turn's decoded CLI events, and operator alerts, fan out to subscribers (the Telegram
notifier) without ever slowing the turn. Each subscriber has a bounded queue, filled only with the turn items it
accepts; when it is full the item is dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

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


class Alert(msgspec.Struct, frozen=True):
    """Something an operator should hear of, not tied to one turn's events: a watchdog timeout, workers that keep
    failing to start, the subscription breaker opening or closing, start-up and shutdown."""

    kind: str  # "timeout", "crash_loop", "breaker", "lifecycle"
    text: str


Item = tuple[TurnRef, TurnEvent | TurnEnd] | Alert
Accept = Callable[[TurnEvent | TurnEnd], bool]


class Subscription:
    def __init__(self, bus: Bus, maxsize: int, accept: Accept | None) -> None:
        self._bus = bus
        self.accept = accept  # which turn items it wants (None: all); alerts always come
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize)
        self.dropped = 0

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._items()

    async def _items(self) -> AsyncIterator[Item]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def _offer(self, item: Item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            self._bus.dropped += 1


class Bus:
    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []
        self.dropped = 0  # items no subscriber queue had room for, ever (metrics)

    def subscribe(self, maxsize: int = 1024, accept: Accept | None = None) -> Subscription:
        """A bounded queue of items; `accept` filters turn items at publish time (the notifier wants tool events,
        not every token)."""
        subscription = Subscription(self, maxsize, accept)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def publish(self, turn: TurnRef, item: TurnEvent | TurnEnd) -> None:
        for subscription in self._subscribers:
            if subscription.accept is None or subscription.accept(item):
                subscription._offer((turn, item))

    def announce(self, alert: Alert) -> None:
        log.info("alert", kind=alert.kind, text=alert.text)
        for subscription in self._subscribers:
            subscription._offer(alert)
