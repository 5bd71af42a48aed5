"""The event bus, the one way to observe turns and the pool: every turn's decoded CLI events, the pool's
observations (time waited for a slot) and operator alerts fan out to whoever watches. A listener (metrics, the
breaker) is called in the publisher's own step, so what it records is in place before the request goes on; it must be
quick and never raises into the publisher. A subscriber (the Telegram notifier) has a bounded queue, filled only with
the turn items it accepts, so it never slows a turn; when the queue is full the item is dropped and counted.
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


class QueueWait(msgspec.Struct, frozen=True):
    """A request got its slot (or gave up) after waiting this long in the admission queue."""

    family: str
    seconds: float


Observation = QueueWait
Entry = tuple[TurnRef, TurnEvent | TurnEnd] | Alert  # what a subscriber's queue gets
Item = Entry | Observation  # what a listener gets
Accept = Callable[[TurnEvent | TurnEnd], bool]
Listener = Callable[[Item], None]


class Subscription:
    def __init__(self, bus: Bus, maxsize: int, accept: Accept | None) -> None:
        self._bus = bus
        self.accept = accept  # which turn items it wants (None: all); alerts always come
        self.queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize)
        self.dropped = 0

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self._items()

    async def _items(self) -> AsyncIterator[Entry]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def _offer(self, item: Entry) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            self._bus.dropped += 1


class Bus:
    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []
        self._listeners: list[Listener] = []
        self.dropped = 0  # items no subscriber queue had room for, ever (metrics)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every item as it is published; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _tell(self, item: Item) -> None:
        for listener in self._listeners:
            try:
                listener(item)
            except Exception:  # a listener's bug must not break the turn or the pool that published
                log.exception("bus_listener_failed")

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
        if self._listeners:
            self._tell((turn, item))
        for subscription in self._subscribers:
            if subscription.accept is None or subscription.accept(item):
                subscription._offer((turn, item))

    def announce(self, alert: Alert) -> None:
        log.info("alert", kind=alert.kind, text=alert.text)
        self._tell(alert)
        for subscription in self._subscribers:
            subscription._offer(alert)

    def note(self, observation: Observation) -> None:
        """An observation of the pool, for listeners only (subscribers get turn items and alerts)."""
        self._tell(observation)
