"""Where the subscription stands: the plan's windows (five-hour, weekly, weekly per model), each with its utilization,
reset time and status, the extra-usage (overage) state and the subscription type. It is kept from two sources: every
`rate_limit_event` the CLI writes (read from the rate-limit headers of each upstream answer; it reaches the plan
through the settled turns on the bus) and the CLI's `get_usage` answer (the plan's usage endpoint, asked at start,
every `plan_refresh_interval` and on demand; never a billed request). Crossing one of `plan_warn_percent` in a window
is announced on the bus (so the notifier) once per window, threshold and reset period; so is extra usage starting to
be used, once until it stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

from maxproxy import errors
from maxproxy.bus import Alert, Bus, Item, TurnSettled
from maxproxy.claude.events import RateLimitInfo
from maxproxy.settings import Settings

log = structlog.get_logger("maxproxy.plan")

Ask = Callable[[], Awaitable[dict[str, Any] | None]]  # the CLI's get_usage answer (None: no worker between turns)
RETRY_SECONDS = 5.0  # no worker could be asked (the pool is still starting): ask again this soon


class Window(msgspec.Struct, frozen=True):
    name: str  # "five_hour", "seven_day", "seven_day_opus", ...
    utilization: float | None  # a fraction: 0.97 is 97% (None: not known, or not since its reset)
    resets_at: float | None  # epoch seconds
    status: str | None  # "allowed", "allowed_warning", "rejected" (the CLI's words); None: not said


class Overage(msgspec.Struct, frozen=True):
    """Extra usage: whether it may be used (`status`), is being used now, and why not when it is disabled."""

    status: str | None = None
    in_use: bool | None = None
    disabled_reason: str | None = None


class ExtraUsage(msgspec.Struct, frozen=True):
    """The usage endpoint's extra-usage account (amounts in the account's minor currency unit)."""

    is_enabled: bool | None = None
    monthly_limit: float | None = None
    used_credits: float | None = None
    utilization: float | None = None  # a fraction
    currency: str | None = None


class Snapshot(msgspec.Struct, frozen=True):
    """What `GET /v1/usage` and the status page show as `plan`."""

    subscription_type: str | None
    windows: list[Window]
    overage: Overage
    extra_usage: ExtraUsage | None
    updated_at: float | None  # epoch seconds of the last thing heard
    limits_available: bool | None  # False: this login cannot read the usage endpoint (windows come from answers)
    warnings: list[str]
    warn_percent: list[float]  # the thresholds (`plan_warn_percent`), lowest first


class _Reading(msgspec.Struct, frozen=True):
    utilization: float | None = None  # percent, as the usage endpoint gives it
    resets_at: str | None = None  # ISO 8601


class _Scoped(msgspec.Struct, frozen=True):
    display_name: str = ""
    utilization: float | None = None
    resets_at: str | None = None


class _Answer(msgspec.Struct, frozen=True):
    """The parts of the CLI's get_usage answer the plan reads (the rest — session cost, behaviours — is ignored)."""

    subscription_type: str | None = None
    rate_limits_available: bool | None = None
    rate_limits: dict[str, Any] | None = None


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _fraction(percent: float | None) -> float | None:
    return None if percent is None else round(percent / 100, 4)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") or "model"


class Plan:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.clock: Callable[[], float] = time.time  # epoch seconds (tests move it instead of waiting)
        self.subscription_type: str | None = None
        self.windows: dict[str, Window] = {}
        self.overage = Overage()
        self.extra_usage: ExtraUsage | None = None
        self.updated_at: float | None = None
        self.limits_available: bool | None = None
        self.asked = 0  # get_usage answers read (metrics, tests)
        self._warned: dict[str, tuple[float | None, float]] = {}  # window → (its reset, highest threshold told)
        self._overage_told = False
        self.ask: Ask | None = None  # how to ask the CLI (set when the pool is up)

    # --- what is heard ----------------------------------------------------------------------------------------------

    def hear(self, item: Item) -> None:
        """A bus listener: the last rate-limit state of every CLI turn of a settled turn."""
        if isinstance(item, TurnSettled):
            for cli_turn in item.cli_turns:
                if cli_turn.rate_limit is not None:
                    self.heard(cli_turn.rate_limit)

    def heard(self, info: RateLimitInfo) -> None:
        """One `rate_limit_event`: its windows replace what was known of them; its overage state is the current one."""
        windows = info.unifiedWindows or {}
        for name, seen in windows.items():
            self._set(Window(name, seen.utilization, seen.resetsAt, seen.status))
        if info.rateLimitType and info.status and info.rateLimitType not in windows:
            # The window the answer was limited by, said without its utilization (a plain `rejected` answer).
            known = self.windows.get(info.rateLimitType)
            utilization = known.utilization if known is not None else None
            resets = info.resetsAt or (known.resets_at if known is not None else None)
            if known is None or known.status != info.status or known.resets_at != resets:
                self._set(Window(info.rateLimitType, utilization, resets, info.status))
        said = info.overageInUse is not None or info.isUsingOverage is not None
        if info.overageStatus is not None or said:  # an event that says nothing of extra usage keeps what was known
            self.overage = Overage(
                status=info.overageStatus or self.overage.status,
                in_use=bool(info.overageInUse or info.isUsingOverage) if said else self.overage.in_use,
                disabled_reason=info.overageDisabledReason if info.overageStatus else self.overage.disabled_reason,
            )
        self.updated_at = self.clock()
        self._check()

    def learn(self, answer: dict[str, Any]) -> None:
        """The CLI's get_usage answer: the subscription type and, when this login may read them, the plan's windows."""
        try:
            read = msgspec.convert(answer, _Answer, strict=False)
        except msgspec.ValidationError as exc:
            log.warning("plan_answer_unreadable", reason=str(exc))
            return
        self.asked += 1
        if read.subscription_type:
            self.subscription_type = read.subscription_type
        self.limits_available = read.rate_limits_available
        for name, value in (read.rate_limits or {}).items():
            try:
                self._learn_part(name, value)
            except msgspec.ValidationError as exc:  # one odd part must not hide the others
                log.warning("plan_answer_part_skipped", part=name, reason=str(exc))
        self.updated_at = self.clock()
        self._check()

    def _learn_part(self, name: str, value: Any) -> None:
        if value is None:
            return  # a window this plan does not have
        if name == "extra_usage":
            extra = msgspec.convert(value, ExtraUsage, strict=False)  # its utilization in percent, as given
            self.extra_usage = msgspec.structs.replace(extra, utilization=_fraction(extra.utilization))
        elif name == "model_scoped":
            for scoped in msgspec.convert(value, list[_Scoped], strict=False):
                self._reading(f"seven_day_{_slug(scoped.display_name)}", scoped.utilization, scoped.resets_at)
        else:
            reading = msgspec.convert(value, _Reading, strict=False)
            self._reading(name, reading.utilization, reading.resets_at)

    def _reading(self, name: str, percent: float | None, resets_at: str | None) -> None:
        resets = _epoch(resets_at)
        known = self.windows.get(name)
        # The endpoint gives no status; the one last heard holds while the window is the same one.
        status = known.status if known is not None and known.resets_at == resets else None
        self._set(Window(name, _fraction(percent), resets, status))

    def _set(self, window: Window) -> None:
        self.windows[window.name] = window

    # --- what is shown ---------------------------------------------------------------------------------------------

    def current(self) -> list[Window]:
        """The windows as they stand now: one whose reset time has passed is no longer known."""
        now = self.clock()
        return [
            w if w.resets_at is None or w.resets_at > now else Window(w.name, None, None, None)
            for w in sorted(self.windows.values(), key=lambda w: w.name)
        ]

    def _crossed(self, window: Window) -> float | None:
        """The highest `plan_warn_percent` threshold the window is at or past (None: none, or not known)."""
        if window.utilization is None:
            return None
        return max((t for t in self.settings.plan_warn_percent if window.utilization * 100 >= t), default=None)

    def warnings(self) -> list[str]:
        out = []
        for window in self.current():
            if window.status == "rejected":
                out.append(f"{window.name} limit reached{_resets(window, self.clock())}")
            elif (crossed := self._crossed(window)) is not None:
                out.append(
                    f"{window.name} at {window.utilization:.0%} (warn at {crossed:g}%){_resets(window, self.clock())}"
                )
        if self.overage.in_use:
            out.append("extra usage is being used")
        return out

    def snapshot(self) -> Snapshot:
        return Snapshot(
            subscription_type=self.subscription_type,
            windows=self.current(),
            overage=self.overage,
            extra_usage=self.extra_usage,
            updated_at=self.updated_at,
            limits_available=self.limits_available,
            warnings=self.warnings(),
            warn_percent=sorted(self.settings.plan_warn_percent),
        )

    def summary(self) -> str | None:
        """One line for `/health`: each known window's utilization (None before anything is heard)."""
        parts = []
        for window in self.current():
            if window.status == "rejected":
                parts.append(f"{window.name} limit reached")
            elif window.utilization is not None:
                parts.append(f"{window.name} {window.utilization:.0%}")
        if self.overage.in_use:
            parts.append("extra usage in use")
        return ", ".join(parts) or None

    # --- warnings --------------------------------------------------------------------------------------------------

    def _check(self) -> None:
        now = self.clock()
        for window in self.current():
            if window.utilization is None:
                continue
            crossed = self._crossed(window)
            reset, told = self._warned.get(window.name, (window.resets_at, 0.0))
            if reset != window.resets_at:  # a new period: its thresholds are told afresh
                told = 0.0
            if crossed is not None and crossed > told:
                told = crossed  # one alert for the highest threshold crossed, however many at once
                self.bus.announce(
                    Alert(
                        "plan",
                        f"the plan's {window.name} window is at {window.utilization:.0%} "
                        f"(warning at {told:g}%){_resets(window, now)}",
                    )
                )
            self._warned[window.name] = (window.resets_at, told)
        if self.overage.in_use and not self._overage_told:
            self._overage_told = True
            self.bus.announce(Alert("plan", "extra usage is being used: answers are billed beyond the plan"))
        elif self.overage.in_use is False:
            self._overage_told = False

    # --- asking the CLI --------------------------------------------------------------------------------------------

    async def refresh(self) -> bool | None:
        """Ask the CLI once: True when it answered, None when no worker was between turns to ask, False when it
        failed (what is known stays)."""
        if self.ask is None:
            return None
        try:
            answer = await self.ask()
        except errors.ProxyError as exc:
            log.warning("plan_refresh_failed", error=str(exc))
            return False
        if answer is None:
            return None
        self.learn(answer)
        log.info("plan_refreshed", summary=self.summary(), limits_available=self.limits_available)
        return True

    async def run(self) -> None:
        """The refresher: asks at start (as soon as a worker is between turns), then every `plan_refresh_interval`
        while this login may read the plan (a login without it answers without the windows: asking again is moot)."""
        interval = self.settings.plan_refresh_interval
        while True:
            answered = await self.refresh()
            if answered is None:
                await asyncio.sleep(RETRY_SECONDS)
            elif not interval or (answered and self.limits_available is False):
                return  # on demand only from now on
            else:
                await asyncio.sleep(interval)


def _resets(window: Window, now: float) -> str:
    if window.resets_at is None:
        return ""
    left = max(0, int(window.resets_at - now))
    hours, minutes = divmod(left // 60, 60)
    days, hours = divmod(hours, 24)
    text = f"{days}d {hours}h" if days else f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"
    return f", resets in {text}"
