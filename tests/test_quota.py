"""Per-key quotas: allowed models, requests in flight, requests per minute and token budgets, each refused with 429,
`Retry-After` and the OpenAI `x-ratelimit-*` headers."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from maxproxy import errors, quota
from maxproxy.keys import Key
from maxproxy.quota import Quotas, duration
from maxproxy.store import Store, UsageRow, UsageStore
from maxproxy.usage import Ledger, today

from tests.test_usage import settled

UNLIMITED = Key(name="free", digest="")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(quota, "time", fake)  # quota's own clock only, not the event loop's
    return fake


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = Store(tmp_path / "state.db")
    await db.open()
    yield db
    await db.close()


@pytest.fixture
def quotas(store: Store) -> Quotas:
    return Quotas(Ledger(UsageStore(store)))


def limited(**limits: int) -> Key:
    return Key(name="bot", digest="", **limits)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (-5, "0ms"),
        (0.45, "450ms"),
        (1, "1s"),
        (12, "12s"),
        (12.2, "13s"),  # rounded up: never earlier than the reset
        (59.5, "1m0s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (7384, "2h3m4s"),
    ],
)
def test_duration_uses_openais_reset_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_duration_just_under_a_second_is_one_second() -> None:
    assert duration(0.9996) == "1s"


def test_check_model_allows_every_model_to_a_key_without_models(quotas: Quotas) -> None:
    quotas.check_model(UNLIMITED, "claude-opus-4")


def test_check_model_refuses_a_model_outside_the_keys_models(quotas: Quotas) -> None:
    key = Key(name="bot", digest="", models=frozenset({"claude-sonnet-4"}))
    quotas.check_model(key, "claude-sonnet-4")
    with pytest.raises(errors.Forbidden) as caught:
        quotas.check_model(key, "claude-opus-4")
    assert (caught.value.status, caught.value.code, caught.value.param) == (403, "model_not_allowed", "model")
    assert "'claude-opus-4'" in caught.value.message


def test_max_concurrent_refuses_one_more_until_one_ends(quotas: Quotas) -> None:
    key = limited(max_concurrent=1)
    with quotas.admit(key):
        with pytest.raises(errors.RateLimited) as caught, quotas.admit(key):
            pass
        assert caught.value.code == "key_concurrency_limit"
        assert caught.value.headers()["Retry-After"] == "1"
        with quotas.admit(msgspec.structs.replace(key, name="other")):  # another key is not counted
            pass
    with quotas.admit(key):
        pass


def test_max_concurrent_frees_the_slot_when_the_request_fails(quotas: Quotas) -> None:
    key = limited(max_concurrent=1)
    with pytest.raises(RuntimeError), quotas.admit(key):
        raise RuntimeError("the turn failed")
    with quotas.admit(key):
        pass


def test_rpm_refuses_the_request_over_the_limit_until_the_minute_passes(quotas: Quotas, clock: Clock) -> None:
    key = limited(rpm=3)
    for n in range(3):
        with quotas.admit(key) as headers:
            assert headers["x-ratelimit-remaining-requests"] == str(2 - n)
        clock.now += 1
    with pytest.raises(errors.RateLimited) as caught, quotas.admit(key):
        pass
    headers = caught.value.headers()
    assert caught.value.code == "key_rate_limit"
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "57s"  # the first request leaves the window in 57 s
    assert headers["Retry-After"] == "57"
    clock.now += 61
    with quotas.admit(key) as headers:
        assert headers["x-ratelimit-remaining-requests"] == "2"


def test_a_refused_request_does_not_use_the_rpm(quotas: Quotas, clock: Clock) -> None:
    key = limited(rpm=1, max_concurrent=1)
    with quotas.admit(key), pytest.raises(errors.RateLimited, match="in flight"), quotas.admit(key):
        pass
    clock.now += 60
    with quotas.admit(key) as headers:
        assert headers["x-ratelimit-remaining-requests"] == "0"


async def spend(ledger: Ledger, tokens: int) -> None:
    """A settled turn of key "bot" that used `tokens` prompt tokens, heard by the ledger and written."""
    ledger.observe(settled("bot", "claude-sonnet-4", tokens, 0, 0, 0.0))
    await ledger.flush()


async def test_daily_tokens_refuses_a_key_over_its_budget(quotas: Quotas) -> None:
    key = limited(daily_tokens=1000)
    await spend(quotas.ledger, 400)
    with quotas.admit(key) as headers:
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert headers["x-ratelimit-remaining-tokens"] == "600"
    await spend(quotas.ledger, 700)
    with pytest.raises(errors.RateLimited) as caught, quotas.admit(key):
        pass
    assert caught.value.code == "key_token_budget"
    assert caught.value.headers()["x-ratelimit-remaining-tokens"] == "0"
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 86400
    with quotas.admit(msgspec.structs.replace(key, name="other")):  # other keys' budgets are their own
        pass


async def test_weekly_tokens_count_the_last_seven_days(store: Store) -> None:
    rows = UsageStore(store)
    three_days_ago = (today() - dt.timedelta(days=3)).isoformat()
    await rows.add(UsageRow(day=three_days_ago, key="bot", model="claude-sonnet-4", requests=1, input_tokens=1500))
    ledger = Ledger(rows)
    await ledger.load()
    quotas = Quotas(ledger)
    with quotas.admit(limited(daily_tokens=1000)):  # not today's
        pass
    with pytest.raises(errors.RateLimited, match="token budget") as caught, quotas.admit(limited(weekly_tokens=1000)):
        pass
    assert caught.value.code == "key_token_budget"


async def test_the_tighter_budget_is_reported(quotas: Quotas) -> None:
    await spend(quotas.ledger, 100)
    headers = quotas.headers(limited(daily_tokens=1000, weekly_tokens=300))
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("300", "200")


def test_headers_only_for_the_limits_a_key_has(quotas: Quotas) -> None:
    with quotas.admit(UNLIMITED) as headers:
        assert headers == {}
    assert quotas.headers(UNLIMITED) == {}
    assert quotas.headers(limited(max_concurrent=2)) == {}
    assert set(quotas.headers(limited(rpm=5))) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert set(quotas.headers(limited(daily_tokens=5))) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }


def test_an_unlimited_key_is_never_refused(quotas: Quotas) -> None:
    with quotas.admit(UNLIMITED), quotas.admit(UNLIMITED), quotas.admit(UNLIMITED):
        pass


@pytest.mark.parametrize(
    ("limits", "tokens"),
    [({"max_concurrent": 2}, False), ({"max_concurrent": 2, "rpm": 10, "daily_tokens": 1000}, True)],
    ids=["concurrency-only", "with-rpm-and-budget"],
)
def test_a_concurrency_429_carries_the_request_headers(
    quotas: Quotas, clock: Clock, limits: dict[str, int], tokens: bool
) -> None:
    key = limited(**limits)
    with quotas.admit(key), quotas.admit(key), pytest.raises(errors.RateLimited) as caught, quotas.admit(key):
        pass
    headers = caught.value.headers()
    assert caught.value.code == "key_concurrency_limit"
    # The limit that refused it, with nothing left of it, and the same reset the Retry-After gives.
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert headers["Retry-After"] == "1"
    assert ("x-ratelimit-remaining-tokens" in headers) is tokens
    if tokens:
        assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("1000", "1000")


def test_every_key_429_carries_its_limits_headers(quotas: Quotas, clock: Clock) -> None:
    key = limited(rpm=1, daily_tokens=1000)
    with quotas.admit(key):
        pass
    with pytest.raises(errors.RateLimited) as caught, quotas.admit(key):
        pass
    headers = caught.value.headers()
    assert caught.value.code == "key_rate_limit"
    assert {name for name in headers if name.startswith("x-ratelimit-")} == {
        f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")
    }
    assert headers["x-ratelimit-remaining-requests"] == "0"
