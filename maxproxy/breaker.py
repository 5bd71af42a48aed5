"""The subscription breaker: when the CLI reports that the plan's limit is reached — a `rate_limit_event` with status
`rejected`, a usage-limit error ("You've hit your 5-hour limit"), a request served from paid extra usage, a refusal
for third-party or extra usage — requests stop reaching the CLI until the limit resets: they get 429 with
`Retry-After` and a message that says why, instead of being retried into errors or into paid usage. A limit of one
model family (e.g. a weekly Opus limit) opens the breaker for that family; the plan's 5-hour and weekly limits open it
for every model. A server-side 429 without the plan's limit ("not your usage limit") or an overload (529) is not a
plan limit: it answers only the request it hit, and the next one goes upstream again. Extra usage is never spent on
purpose unless `allow_extra_usage` is set: the first answer the CLI reports as billed from extra usage opens the
breaker (the CLI tells only afterwards; protocol note §13).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from maxproxy import errors
from maxproxy.bus import Alert, Bus, Item, TurnSettled
from maxproxy.claude.events import RateLimitInfo, Result
from maxproxy.settings import Settings

log = structlog.get_logger("maxproxy.breaker")

ALL = "all"
FAMILIES = ("opus", "sonnet", "haiku")
# The texts the CLI reads as "a usage limit was reached" (protocol note §13): its list of prefixes, as in CLI 2.1.328.
# Prefixes only: a server-side 429 says "API Error: Server is temporarily limiting requests (not your usage limit)".
USAGE_LIMIT_PREFIXES = (
    "You've hit your",
    "You've reached your",
    "You're out of usage credits",
    "Your org is out of usage",
    "Your seat type doesn't include usage",
    "Your usage allocation has been disabled by your admin",
    "Your group's usage limit is set to $0",
    "You're out of extra usage",
    "Your seat type doesn't include extra usage",
)
_EXTRA_USAGE = re.compile(r"third-party apps|extra usage", re.IGNORECASE)


@dataclass(frozen=True)
class Trip:
    scope: str  # "all" or a model family
    until: float  # epoch seconds
    reason: str


class Breaker:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus  # where opening and closing are announced (the notifier)
        self._open: dict[str, Trip] = {}
        self.trips = 0
        self.clock: Callable[[], float] = time.time  # epoch seconds (tests move it instead of waiting)

    def state(self) -> list[Trip]:
        """The breakers open now (closing the ones whose time has passed)."""
        now = self.clock()
        for scope, trip in list(self._open.items()):
            if trip.until <= now:
                del self._open[scope]
                log.info("breaker_closed", scope=scope)
                self._tell("closed", trip)
        return list(self._open.values())

    def check(self, family: str) -> None:
        """Refuse a request for `family` while its breaker (or the all-models one) is open."""
        for trip in self.state():
            if trip.scope in (ALL, family):
                raise errors.RateLimited(
                    f"Not sent to the subscription: {trip.reason}. It resets at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(trip.until))}.",
                    retry_after=max(1.0, trip.until - self.clock()),
                    code="subscription_limit",
                )

    def observe(self, family: str, info: RateLimitInfo | None, result: Result | None) -> None:
        """Read one turn's rate-limit state and result; open the breaker if they say the plan's limit is reached.
        A server-side 429 or 529 opens nothing: it answers only the request it hit."""
        reset = info.resetsAt if info is not None and info.resetsAt else None
        scope = _scope(info.rateLimitType if info is not None else None, family)
        kind = (info.rateLimitType if info is not None else None) or "usage"
        overage = info is not None and bool(info.isUsingOverage)
        if overage and not self.settings.allow_extra_usage:  # served, and billed, beyond the plan
            self._trip(scope, reset, f"the plan's {kind} limit is reached and answers are billed as extra usage")
        elif plan_limit_event(info) and not overage:
            self._trip(scope, reset, f"the plan's {kind} limit is reached")
        # An answer served from allowed extra usage is fine; the plan's or the extra usage's end is not.
        if result is not None and result.is_error:
            text = result.result or " ".join(result.errors or [])
            if plan_limit_result(result):
                self._trip(scope, reset, text.strip())
            elif result.api_error_status in (400, 403) and _EXTRA_USAGE.search(text):
                self._trip(ALL, reset, f"the upstream refused the request: {text.strip()}")

    def hear(self, item: Item) -> None:
        """A bus listener: every CLI turn of every settled turn is observed, a turn that used nothing included."""
        if isinstance(item, TurnSettled):
            for cli_turn in item.cli_turns:
                self.observe(item.family, cli_turn.rate_limit, cli_turn.result)

    def _trip(self, scope: str, reset: float | None, reason: str) -> None:
        now = self.clock()
        until = reset if reset is not None and reset > now else now + self.settings.breaker_seconds
        current = self._open.get(scope)
        if current is not None and current.until >= until:
            return
        trip = self._open[scope] = Trip(scope=scope, until=until, reason=reason)
        self.trips += 1
        log.warning("breaker_opened", scope=scope, until=int(until), reason=reason)
        self._tell("opened", trip)

    def _tell(self, what: str, trip: Trip) -> None:
        self.bus.announce(Alert("breaker", f"subscription breaker {what} for {trip.scope} models: {trip.reason}"))


def plan_limit_event(info: RateLimitInfo | None) -> bool:
    """A `rejected` rate-limit state that names the plan's limit (its type or its reset). For a plain 429 without the
    plan's headers the CLI writes a bare `{"status": "rejected"}` (measured): that is the server throttling."""
    return info is not None and info.status == "rejected" and bool(info.rateLimitType or info.resetsAt)


def plan_limit_result(result: Result) -> bool:
    """An error result that says the plan's usage limit is reached (not a passing server-side 429)."""
    if not result.is_error or result.api_error_status != 429:
        return False
    text = (result.result or " ".join(result.errors or [])).strip()
    return result.api_error == "usage_limit_reached" or text.startswith(USAGE_LIMIT_PREFIXES)


def _scope(limit_type: str | None, family: str) -> str:
    """`five_hour`, `seven_day` → every model; `seven_day_opus` → the opus family; unknown → the request's family's
    answer says nothing about other models, so only that family."""
    if limit_type is None:
        return ALL
    for name in FAMILIES:
        if name in limit_type:
            return name
    if limit_type.startswith(("five_hour", "seven_day")):
        return ALL
    return family
