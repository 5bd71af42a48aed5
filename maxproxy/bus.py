"""The event bus, the one way to observe turns and the pool: every turn's decoded CLI events, observations (time waited
for a slot; what a turn used and how its CLI turns ended) and operator alerts fan out to whoever watches. A listener
(metrics, the usage ledger, the breaker) hears observations and alerts — not the per-token turn events — in the
publisher's own step, so what it records is in place before the request goes on; it must be quick and never raises
into the publisher. A subscriber (the Telegram notifier) has a
bounded queue, filled only with the turn items it accepts, so it never slows a turn; when the queue is full the item is
dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import structlog

from maxproxy.claude.events import RateLimitInfo, Result, TurnEvent

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

    kind: str  # "timeout", "crash_loop", "breaker", "plan", "lifecycle"
    text: str


class QueueWait(msgspec.Struct, frozen=True):
    """A request got its slot after waiting this long in the admission queue (0 when it did not wait)."""

    family: str
    seconds: float


class CliTurn(msgspec.Struct, frozen=True):
    """How one CLI turn of an answer ended: its last rate-limit state and its result (None when it had none)."""

    rate_limit: RateLimitInfo | None
    result: Result | None


class TurnSettled(msgspec.Struct, frozen=True, kw_only=True):
    """A turn's accounting, published once when it ends (whatever happened, a cancelled request included): what it
    used over all its CLI turns (a structured answer asked for again has more than one) and how each of them ended."""

    key: str  # the API key's name
    model: str
    family: str
    input_tokens: int  # prompt tokens not read from the cache (cache writes included, as the usage rows count them)
    cached_tokens: int  # prompt tokens read from the cache
    cache_creation_tokens: int  # of `input_tokens`, those written to the cache
    output_tokens: int
    cost_usd: float  # as the CLI reports it (0 when no CLI turn ended with a result)
    cli_turns: tuple[CliTurn, ...]

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cached_tokens + self.output_tokens

    @property
    def spent(self) -> bool:
        """Anything to count (a turn that used nothing is not a usage row, nor a metric)."""
        return bool(self.total_tokens or self.cost_usd)


Observation = QueueWait | TurnSettled
Entry = tuple[TurnRef, TurnEvent | TurnEnd] | Alert  # what a subscriber's queue gets
Item = Alert | Observation  # what a listener gets
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
        # Subscribers only: this runs for every streamed token, and no listener wants turn events.
        for subscription in self._subscribers:
            if subscription.accept is None or subscription.accept(item):
                subscription._offer((turn, item))

    def announce(self, alert: Alert) -> None:
        log.info("alert", kind=alert.kind, text=alert.text)
        self._tell(alert)
        for subscription in self._subscribers:
            subscription._offer(alert)

    def note(self, observation: Observation) -> None:
        """An observation of the pool or of a turn's accounting, for listeners only (subscribers get turn items and
        alerts)."""
        self._tell(observation)
