"""The plan's state: read from the CLI's recorded `rate_limit_event` lines and from its `get_usage` answer; warnings
announced once per window, threshold and reset period; extra usage announced once until it stops; the refresher's
answers, failures and stops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from maxproxy import errors
from maxproxy.bus import Alert, Bus, CliTurn, Item, TurnSettled
from maxproxy.claude.events import RateLimit, RateLimitInfo, WindowInfo, decode
from maxproxy.plan import Plan, Window

from tests.conftest import make_settings
from tests.test_usage import settled as usage_settled

NOW = 1_796_140_000.0
# A line the real CLI 2.1.328 wrote for an answer with the plan's headers at 97% (five-hour) and 41% (weekly),
# extra usage allowed and in use (recorded; see tests/e2e/test_plan_state.py for how it is produced).
RECORDED = (
    b'{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","resetsAt":1796149592,'
    b'"rateLimitType":"five_hour","overageStatus":"allowed","overageDisabledReason":"org_level_disabled",'
    b'"isUsingOverage":false,"overageInUse":true,"unifiedWindows":{"five_hour":{"utilization":0.97,'
    b'"resetsAt":1796149592,"status":"allowed_warning"},"seven_day":{"utilization":0.41,"resetsAt":1796405192,'
    b'"status":"allowed"}}},"uuid":"0aae1449-74dc-4bd2-8352-801047a0cd27","session_id":"d7617660"}'
)
# The CLI's get_usage answer as its SDK types describe it: percentages and ISO times from the plan's usage endpoint.
ANSWER: dict[str, Any] = {
    "session": {"total_cost_usd": 0, "model_usage": {}},
    "subscription_type": "max",
    "rate_limits_available": True,
    "rate_limits": {
        "five_hour": {"utilization": 37.0, "resets_at": "2026-12-01T20:00:00+00:00"},
        "seven_day": {"utilization": 12.5, "resets_at": "2026-12-05T09:00:00Z"},
        "seven_day_opus": None,
        "seven_day_sonnet": {"utilization": "not a number", "resets_at": None},
        "model_scoped": [{"display_name": "Fable", "utilization": 3.0, "resets_at": "2026-12-06T00:00:00+00:00"}],
        "extra_usage": {"is_enabled": True, "monthly_limit": 50000, "used_credits": 27140, "utilization": 54.28},
    },
    "behaviors": None,
}


@pytest.fixture
def bus() -> Bus:
    return Bus()


@pytest.fixture
def alerts(bus: Bus) -> list[str]:
    told: list[str] = []

    def hear(item: Item) -> None:
        if isinstance(item, Alert) and item.kind == "plan":
            told.append(item.text)

    bus.listen(hear)
    return told


@pytest.fixture
def plan(tmp_path: Path, bus: Bus) -> Plan:
    made = Plan(make_settings(tmp_path), bus)
    made.clock = lambda: NOW
    return made


def settled(info: RateLimitInfo) -> TurnSettled:
    return usage_settled("bot", "claude-sonnet-4", 10, 0, 5, 0.0, (CliTurn(rate_limit=info, result=None),))


def at(utilization: float, resets: float = NOW + 3600) -> RateLimitInfo:
    return RateLimitInfo(unifiedWindows={"five_hour": WindowInfo(utilization=utilization, resetsAt=resets)})


def test_a_recorded_rate_limit_event_sets_the_windows_and_the_overage(plan: Plan, alerts: list[str]) -> None:
    event = decode(RECORDED)
    assert isinstance(event, RateLimit)
    plan.hear(settled(event.rate_limit_info))
    snapshot = plan.snapshot()
    assert snapshot.windows == [
        Window("five_hour", 0.97, 1796149592, "allowed_warning"),
        Window("seven_day", 0.41, 1796405192, "allowed"),
    ]
    assert (snapshot.overage.status, snapshot.overage.in_use) == ("allowed", True)
    assert snapshot.overage.disabled_reason == "org_level_disabled"
    assert snapshot.updated_at == NOW
    assert plan.summary() == "five_hour 97%, seven_day 41%, extra usage in use"
    assert snapshot.warnings[0].startswith("five_hour at 97% (warn at 95%), resets in 2h 39m")
    assert snapshot.warnings[1:] == ["extra usage is being used"]
    assert alerts == [
        "the plan's five_hour window is at 97% (warning at 95%), resets in 2h 39m",
        "extra usage is being used: answers are billed beyond the plan",
    ]


def test_a_get_usage_answer_sets_the_type_the_windows_and_extra_usage(plan: Plan) -> None:
    plan.learn(ANSWER)
    snapshot = plan.snapshot()
    assert snapshot.subscription_type == "max"
    assert snapshot.limits_available is True
    by_name = {w.name: w for w in snapshot.windows}
    # Percentages become fractions, ISO times epoch seconds; a window the plan lacks (null) or cannot be read is
    # left out, and the rest still count.
    assert set(by_name) == {"five_hour", "seven_day", "seven_day_fable"}
    assert by_name["five_hour"] == Window("five_hour", 0.37, 1796155200.0, None)
    assert by_name["seven_day"].utilization == 0.125
    assert by_name["seven_day"].resets_at == 1796461200.0
    assert by_name["seven_day_fable"].utilization == 0.03
    assert snapshot.extra_usage is not None
    assert (snapshot.extra_usage.is_enabled, snapshot.extra_usage.utilization) == (True, 0.5428)
    assert plan.asked == 1


def test_the_endpoint_keeps_the_status_heard_for_the_same_window(plan: Plan) -> None:
    resets = 1796155200.0
    plan.heard(RateLimitInfo(unifiedWindows={"five_hour": WindowInfo(0.30, resets, "allowed")}))
    plan.learn(ANSWER)
    assert plan.windows["five_hour"] == Window("five_hour", 0.37, resets, "allowed")


def test_a_login_without_the_plans_scope_says_so_and_keeps_what_answers_said(plan: Plan) -> None:
    plan.heard(at(0.5))
    plan.learn({"subscription_type": None, "rate_limits_available": False, "rate_limits": None})
    snapshot = plan.snapshot()
    assert (snapshot.subscription_type, snapshot.limits_available) == (None, False)
    assert [w.utilization for w in snapshot.windows] == [0.5]


def test_an_unreadable_answer_changes_nothing(plan: Plan) -> None:
    plan.learn({"subscription_type": 7, "rate_limits": "no"})
    assert (plan.asked, plan.windows, plan.updated_at) == (0, {}, None)


def test_each_threshold_is_told_once_per_reset_period(plan: Plan, alerts: list[str]) -> None:
    for utilization in (0.5, 0.82, 0.85, 0.79, 0.97, 0.99):
        plan.heard(at(utilization))
    assert [text.split(" (")[1] for text in alerts] == [
        "warning at 80%), resets in 1h 00m",
        "warning at 95%), resets in 1h 00m",
    ]
    plan.heard(at(0.81, resets=NOW + 7200))  # the window reset: a new period
    assert len(alerts) == 3
    assert "at 81% (warning at 80%)" in alerts[-1]


def test_a_jump_past_both_thresholds_is_one_alert(plan: Plan, alerts: list[str]) -> None:
    plan.heard(at(0.96))
    assert len(alerts) == 1
    assert "(warning at 95%)" in alerts[0]


def test_thresholds_come_from_the_settings(tmp_path: Path, bus: Bus, alerts: list[str]) -> None:
    plan = Plan(make_settings(tmp_path, plan_warn_percent=[50]), bus)
    plan.clock = lambda: NOW
    plan.heard(at(0.6))
    plan.heard(at(0.99))
    assert len(alerts) == 1
    assert "(warning at 50%)" in alerts[0]


def test_extra_usage_is_told_once_until_it_stops(plan: Plan, alerts: list[str]) -> None:
    for in_use in (True, True, False, True):
        plan.heard(RateLimitInfo(overageStatus="allowed", overageInUse=in_use))
    assert alerts == ["extra usage is being used: answers are billed beyond the plan"] * 2


def test_a_window_past_its_reset_is_no_longer_known(plan: Plan) -> None:
    plan.heard(at(0.9, resets=NOW + 60))
    plan.clock = lambda: NOW + 61
    assert plan.current() == [Window("five_hour", None, None, None)]
    assert plan.summary() is None
    assert plan.warnings() == []


def test_a_rejected_window_is_a_warning_without_utilization(plan: Plan) -> None:
    plan.heard(RateLimitInfo(status="rejected", resetsAt=NOW + 600, rateLimitType="five_hour"))
    assert plan.summary() == "five_hour limit reached"
    assert plan.warnings() == ["five_hour limit reached, resets in 10m"]


async def test_refresh_answers_fails_or_finds_no_worker(plan: Plan) -> None:
    assert await plan.refresh() is None  # not attached to a pool yet

    async def nobody() -> dict[str, Any] | None:
        return None

    async def broken() -> dict[str, Any] | None:
        raise errors.CLIFailed("The CLI did not answer the get_usage control request in 10s")

    async def answers() -> dict[str, Any] | None:
        answer: dict[str, Any] = json.loads(json.dumps(ANSWER))
        return answer

    for ask, expected in ((nobody, None), (broken, False), (answers, True)):
        plan.ask = ask
        assert await plan.refresh() is expected
    assert plan.subscription_type == "max"


async def test_the_refresher_stops_when_this_login_cannot_read_the_plan(plan: Plan) -> None:
    asked = 0

    async def no_scope() -> dict[str, Any] | None:
        nonlocal asked
        asked += 1
        return {"subscription_type": None, "rate_limits_available": False, "rate_limits": None}

    plan.ask = no_scope
    await plan.run()  # returns: on demand only from now on
    assert asked == 1
    assert plan.limits_available is False
