"""The subscription breaker: what opens it (a rejected rate-limit event, paid extra usage, usage-limit and
third-party refusals), for which models, for how long, and what requests get meanwhile."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from maxproxy import breaker, errors, reply
from maxproxy.breaker import Breaker
from maxproxy.bus import Alert, Bus, Item
from maxproxy.claude.events import RateLimitInfo, Result, decode

from tests.conftest import make_settings

NOW = 1_800_000_000.0


class Clock(SimpleNamespace):
    """`time` as the breaker sees it, at `now`."""

    def __init__(self) -> None:
        super().__init__(strftime=time.strftime, gmtime=time.gmtime)
        self.now = NOW

    def time(self) -> float:
        return float(self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(breaker, "time", fake)
    monkeypatch.setattr(reply, "time", fake)  # the first answer's Retry-After, from the same clock
    return fake


def make(tmp_path: Path, bus: Bus | None = None, **overrides: Any) -> tuple[Breaker, list[tuple[str, str]]]:
    """A breaker and what it announced on the bus: ("opened" | "closed", the alert's text)."""
    bus = bus or Bus()
    b = Breaker(make_settings(tmp_path, **overrides), bus)
    told: list[tuple[str, str]] = []

    def heard(item: Item) -> None:
        if isinstance(item, Alert) and item.kind == "breaker":
            told.append((item.text.split()[2], item.text))

    bus.listen(heard)
    return b, told


def rejected(kind: str | None = "five_hour", resets: float | None = NOW + 3600) -> RateLimitInfo:
    return RateLimitInfo(status="rejected", resetsAt=resets, rateLimitType=kind)


def failed(status: int, text: str) -> Result:
    return Result(subtype="error_during_execution", is_error=True, result=text, api_error_status=status)


def open_scopes(b: Breaker) -> dict[str, float]:
    return {trip.scope: trip.until for trip in b.state()}


def test_a_rejected_event_opens_the_breaker_for_every_model_until_the_reset(tmp_path: Path, clock: Clock) -> None:
    b, told = make(tmp_path)
    b.observe("sonnet", rejected("five_hour"), None)
    assert open_scopes(b) == {"all": NOW + 3600}
    assert b.trips == 1
    assert [what for what, _ in told] == ["opened"]
    clock.now += 600
    for family in ("opus", "sonnet", "haiku"):
        with pytest.raises(errors.RateLimited) as caught:
            b.check(family)
        exc = caught.value
        assert (exc.status, exc.code) == (429, "subscription_limit")
        assert exc.retry_after == pytest.approx(3000)
        assert exc.headers()["Retry-After"] == "3000"
        assert "five_hour limit is reached" in exc.message


def test_the_breaker_is_closed_to_start_with(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path)
    b.observe("sonnet", RateLimitInfo(status="allowed", resetsAt=NOW + 3600, rateLimitType="five_hour"), None)
    b.observe("sonnet", None, Result(subtype="success", result="hi"))
    b.check("sonnet")
    assert b.state() == []
    assert b.trips == 0


@pytest.mark.parametrize(("kind", "scope"), [("five_hour", "all"), ("seven_day", "all"), (None, "all")])
def test_plan_wide_limits_open_for_every_model(tmp_path: Path, clock: Clock, kind: str | None, scope: str) -> None:
    b, _ = make(tmp_path)
    b.observe("haiku", rejected(kind), None)
    assert set(open_scopes(b)) == {scope}


def test_a_family_limit_blocks_only_that_family(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path)
    b.observe("opus", rejected("seven_day_opus"), None)
    assert set(open_scopes(b)) == {"opus"}
    with pytest.raises(errors.RateLimited, match="seven_day_opus"):
        b.check("opus")
    b.check("sonnet")
    b.check("haiku")


def test_an_unknown_limit_type_blocks_the_requests_family(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path)
    b.observe("sonnet", rejected("something_new"), None)
    assert set(open_scopes(b)) == {"sonnet"}


def test_extra_usage_opens_the_breaker(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path)
    b.observe("sonnet", RateLimitInfo(status="allowed", rateLimitType="five_hour", isUsingOverage=True), None)
    assert set(open_scopes(b)) == {"all"}
    with pytest.raises(errors.RateLimited, match="extra usage"):
        b.check("sonnet")


def test_extra_usage_is_allowed_when_the_setting_says_so(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path, allow_extra_usage=True)
    b.observe("sonnet", RateLimitInfo(status="allowed", rateLimitType="five_hour", isUsingOverage=True), None)
    b.check("sonnet")
    assert b.trips == 0


def test_a_usage_limit_error_without_a_reset_opens_for_breaker_seconds(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path, breaker_seconds=120)
    b.observe("sonnet", None, failed(429, "You've hit your 5-hour limit · resets 5pm"))
    assert open_scopes(b) == {"all": NOW + 120}
    with pytest.raises(errors.RateLimited, match="You've hit your 5-hour limit") as caught:
        b.check("opus")
    assert caught.value.retry_after == pytest.approx(120)


def test_a_reset_in_the_past_opens_for_breaker_seconds(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path)
    b.observe("sonnet", rejected("five_hour", resets=NOW - 5), None)
    assert open_scopes(b) == {"all": NOW + 600}


def test_a_third_party_refusal_opens_for_every_model(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path)
    b.observe("opus", None, failed(400, "This organization does not allow third-party apps to use the plan"))
    assert set(open_scopes(b)) == {"all"}
    with pytest.raises(errors.RateLimited, match="upstream refused"):
        b.check("haiku")


@pytest.mark.parametrize(
    "result",
    [
        failed(500, "Internal server error"),
        failed(429, "Rate limited: too many requests"),  # throttling, not the plan's limit
        failed(400, "prompt is too long"),
        Result(subtype="success", is_error=False, result="You've hit your 5-hour limit", api_error_status=None),
    ],
)
def test_other_results_do_not_open_it(tmp_path: Path, clock: Clock, result: Result) -> None:
    b, told = make(tmp_path)
    b.observe("sonnet", None, result)
    b.check("sonnet")
    assert told == []


def test_state_closes_a_trip_whose_time_passed(tmp_path: Path, clock: Clock) -> None:
    b, told = make(tmp_path)
    b.observe("sonnet", rejected("five_hour", resets=NOW + 60), None)
    (trip,) = b.state()
    clock.now += 59
    assert b.state() == [trip]
    clock.now += 1
    assert b.state() == []
    assert [what for what, _ in told] == ["opened", "closed"]
    assert all(f"for all models: {trip.reason}" in text for _, text in told)
    b.check("sonnet")


def test_a_failing_bus_listener_does_not_stop_the_others(tmp_path: Path, clock: Clock) -> None:
    bus = Bus()

    def broken(item: Item) -> None:
        raise RuntimeError("listener bug")

    bus.listen(broken)  # called first
    b, told = make(tmp_path, bus)
    b.observe("sonnet", rejected(), None)
    assert [what for what, _ in told] == ["opened"]


def test_a_later_shorter_trip_does_not_shorten_an_open_one(tmp_path: Path, clock: Clock) -> None:
    b, told = make(tmp_path)
    b.observe("sonnet", rejected("seven_day", resets=NOW + 86400), None)
    b.observe("sonnet", rejected("five_hour", resets=NOW + 60), None)
    assert open_scopes(b) == {"all": NOW + 86400}
    assert b.trips == 1
    assert len(told) == 1
    b.observe("sonnet", rejected("seven_day", resets=NOW + 90000), None)  # a longer one extends it
    assert open_scopes(b) == {"all": NOW + 90000}
    assert b.trips == 2


# --- bugs ----------------------------------------------------------------------------------------------------------


def test_allowed_extra_usage_is_spent_until_it_runs_out(tmp_path: Path, clock: Clock) -> None:
    b, _ = make(tmp_path, allow_extra_usage=True)
    served = RateLimitInfo(status="rejected", resetsAt=NOW + 3600, rateLimitType="five_hour", isUsingOverage=True)
    b.observe("sonnet", served, None)
    b.check("sonnet")  # served from extra usage, which is allowed: stays closed
    b.observe("sonnet", served, failed(429, "You're out of extra usage · resets 5pm"))
    with pytest.raises(errors.RateLimited):
        b.check("sonnet")


# --- recorded CLI answers (tests/fixtures/oauth: the real CLI, OAuth token, fake upstream, no retries) ------------

OAUTH = Path(__file__).parent / "fixtures" / "oauth"


def turn(name: str) -> reply.Assembler:
    """One recorded turn fed to the reply assembler, as a request's answer would be."""
    assembler = reply.Assembler(streaming=False)
    for raw in (OAUTH / f"{name}.jsonl").read_bytes().splitlines():
        event = decode(raw)
        if event is not None:
            assembler.feed(event)
    return assembler


def test_a_server_side_429_answers_one_request_and_opens_nothing(tmp_path: Path, clock: Clock) -> None:
    # Upstream 429 + retry-after: 2 without the plan's headers: the CLI writes a bare `rejected` rate-limit event and
    # "API Error: Server is temporarily limiting requests (not your usage limit) · Rate limited".
    assembler = turn("server_429_retry_after_2")
    assert assembler.rate_limit == RateLimitInfo(status="rejected", isUsingOverage=False)
    failure = assembler.failure()
    assert isinstance(failure, errors.RateLimited)
    assert (failure.status, failure.code) == (429, "rate_limit_exceeded")
    assert 1 <= int(failure.headers()["Retry-After"]) <= 5
    b, told = make(tmp_path)
    b.observe("sonnet", assembler.rate_limit, assembler.result)
    assert told == []
    for family in ("opus", "sonnet", "haiku"):
        b.check(family)


def test_a_529_answers_one_request_with_its_status_and_opens_nothing(tmp_path: Path, clock: Clock) -> None:
    assembler = turn("server_529_retry_after_2")
    failure = assembler.failure()
    assert failure is not None
    assert (failure.status, failure.type, failure.code) == (529, "overloaded_error", "upstream_overloaded")
    assert 1 <= int(failure.headers()["Retry-After"]) <= 5
    b, told = make(tmp_path)
    b.observe("sonnet", assembler.rate_limit, assembler.result)
    assert told == []


def test_a_recorded_five_hour_limit_opens_every_model_until_its_reset(tmp_path: Path, clock: Clock) -> None:
    assembler = turn("plan_limit_five_hour")
    info = assembler.rate_limit
    assert info is not None
    assert info.resetsAt is not None
    clock.now = info.resetsAt - 3600
    failure = assembler.failure()
    assert isinstance(failure, errors.RateLimited)
    assert failure.code == "subscription_limit"
    assert failure.retry_after == pytest.approx(3600, abs=2)
    b, _ = make(tmp_path)
    b.observe("sonnet", info, assembler.result)
    assert open_scopes(b) == {"all": info.resetsAt}
    for family in ("opus", "sonnet", "haiku"):
        with pytest.raises(errors.RateLimited, match="five_hour"):
            b.check(family)


def test_a_recorded_weekly_opus_limit_opens_only_opus(tmp_path: Path, clock: Clock) -> None:
    assembler = turn("plan_limit_seven_day_opus")
    info = assembler.rate_limit
    assert info is not None
    assert info.resetsAt is not None
    clock.now = info.resetsAt - 86400
    b, _ = make(tmp_path)
    b.observe("opus", info, assembler.result)
    assert open_scopes(b) == {"opus": info.resetsAt}
    with pytest.raises(errors.RateLimited):
        b.check("opus")
    b.check("sonnet")
    b.check("haiku")


@pytest.mark.parametrize(
    "text",
    [
        "API Error: Server is temporarily limiting requests (not your usage limit) · Rate limited",
        "API Error: Request rejected (429) · rate limited",
    ],
)
def test_usage_limit_words_inside_a_throttling_text_open_nothing(tmp_path: Path, clock: Clock, text: str) -> None:
    b, told = make(tmp_path)
    b.observe("sonnet", RateLimitInfo(status="rejected", isUsingOverage=False), failed(429, text))
    assert told == []
