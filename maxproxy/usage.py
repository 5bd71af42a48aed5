"""Usage accounting: every answer's tokens (and, when the CLI's turn ends, its cost in USD as the CLI reports it) are
added to the API key's row for that model and UTC day in the store, and kept summed in memory for the keys' token
budgets. A turn that stops at tool calls counts its model calls in the answer that handed the calls over; the answer
that finishes the turn counts its own calls and the turn's cost (the CLI reports the cost once, for the whole turn).
Each turn's usage comes as a bus observation (`observe`, `bus.TurnSettled`) and is counted in the publisher's step;
rows are written by one writer task, off the request path; `flush` writes what is pending (on reads of the usage and
at shutdown). Each key's last 24 hours are also kept by the hour (`hours`, the status page's chart).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time

import structlog

from maxproxy.bus import Item, TurnSettled
from maxproxy.store import HourRow, UsageRow, UsageStore

log = structlog.get_logger("maxproxy.usage")

WINDOW_DAYS = 7  # the longest budget window (weekly_tokens)
HOURS = 24  # the hourly rows kept in memory (the status page's chart)


def this_hour() -> int:
    """Epoch seconds at the start of the current UTC hour."""
    return int(time.time()) // 3600 * 3600


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def seconds_to_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return (midnight - now).total_seconds()


class Ledger:
    def __init__(self, rows: UsageStore) -> None:
        self.rows = rows
        self._tokens: collections.Counter[tuple[str, str]] = collections.Counter()  # (key, day) → tokens
        self._hours: dict[tuple[str, int], HourRow] = {}  # (key, hour) → the last 24 hours' rows
        self._pending: collections.deque[tuple[UsageRow, int]] = collections.deque()  # rows and their hour
        self._wake = asyncio.Event()

    async def load(self) -> None:
        """Read the budget window's totals and the last hours (they survive restarts)."""
        since = (today() - dt.timedelta(days=WINDOW_DAYS)).isoformat()
        for row in await self.rows.since(since):
            self._tokens[(row.key, row.day)] += row.total_tokens
        for hour in await self.rows.hours(this_hour() - (HOURS - 1) * 3600):
            self._hours[(hour.key, hour.hour)] = hour

    def hours(self, key: str) -> list[HourRow]:
        """The key's last 24 UTC hours, oldest first, the current one last (hours without use included)."""
        first = this_hour() - (HOURS - 1) * 3600
        return [self._hours.get((key, h)) or HourRow(hour=h, key=key) for h in range(first, first + HOURS * 3600, 3600)]

    def observe(self, item: Item) -> None:
        """A bus listener: every turn that used something is counted as one request, now (budgets see it at once);
        the writer task stores it."""
        if isinstance(item, TurnSettled) and item.spent:
            tokens = (item.input_tokens, item.cached_tokens, item.output_tokens)
            self._add(item.key, item.model, 1, *tokens, item.cost_usd)

    def _add(self, key: str, model: str, requests: int, input_: int, cached: int, output: int, cost: float) -> None:
        row = UsageRow(
            day=today().isoformat(),
            key=key,
            model=model,
            requests=requests,
            input_tokens=input_,
            cached_tokens=cached,
            output_tokens=output,
            cost_usd=cost,
        )
        self._tokens[(key, row.day)] += row.total_tokens
        hour = this_hour()
        if (key, hour) not in self._hours:  # the key's first use this hour: hours past the window go
            for stale in [k for k in self._hours if k[1] <= hour - HOURS * 3600]:
                del self._hours[stale]
        kept = self._hours.setdefault((key, hour), HourRow(hour=hour, key=key))
        kept.requests += requests
        kept.tokens += row.total_tokens
        kept.cost_usd += cost
        self._pending.append((row, hour))
        self._wake.set()

    async def flush(self) -> None:
        while self._pending:
            row, hour = self._pending.popleft()
            try:
                await self.rows.add(row, hour)
            except asyncio.CancelledError:
                raise  # the statement still runs to its end (the store does not abandon it): the row is written
            except Exception:
                self._pending.appendleft((row, hour))  # a failed write is tried again, not lost
                raise

    async def run(self) -> None:
        """The writer: stores noted rows as they come."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the rows stay pending; the next note retries
                log.exception("usage_write_failed")

    def spent(self, key: str, days: int) -> int:
        """Tokens the key used today and the `days - 1` days before (UTC)."""
        first = today()
        return sum(self._tokens[(key, (first - dt.timedelta(days=n)).isoformat())] for n in range(days))
