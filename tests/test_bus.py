"""The bus as the one way to observe a turn: a turn's accounting (`TurnSettled`), published once, reaches the metrics,
the usage ledger and the breaker in the publisher's step, each as a listener wired as the app wires them; a listener
that fails does not keep the item from the others; a turn that used nothing is no usage, but the breaker reads it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from maxproxy import errors
from maxproxy.breaker import Breaker
from maxproxy.bus import Alert, Bus, CliTurn, Item, TurnSettled
from maxproxy.claude.events import RateLimitInfo, Result
from maxproxy.metrics import Metrics
from maxproxy.store import Store, UsageRow, UsageStore
from maxproxy.usage import Ledger, today

from tests.conftest import make_settings

MODEL = "claude-sonnet-4"


@dataclass
class Listeners:
    bus: Bus
    metrics: Metrics
    ledger: Ledger
    breaker: Breaker
    rows: UsageStore
    heard: list[Item]


@pytest.fixture
async def listeners(tmp_path: Path) -> AsyncIterator[Listeners]:
    store = Store(tmp_path / "state" / "maxproxy.db")
    await store.open()
    bus, heard = Bus(), list[Item]()

    def broken(item: Item) -> None:
        raise RuntimeError("listener bug")

    bus.listen(broken)  # called first: the others still hear every item
    metrics, breaker = Metrics({MODEL}), Breaker(make_settings(tmp_path), bus)
    bus.listen(metrics.observe)  # as create_app wires them
    bus.listen(breaker.hear)
    rows = UsageStore(store)
    ledger = Ledger(rows)
    stop = bus.listen(ledger.observe)  # as the usage context does
    bus.listen(heard.append)
    yield Listeners(bus, metrics, ledger, breaker, rows, heard)
    stop()
    await store.close()


def settled(tokens: tuple[int, int, int], cost: float, *cli_turns: CliTurn) -> TurnSettled:
    input_tokens, cached, output = tokens
    return TurnSettled(
        key="bot",
        model=MODEL,
        family="sonnet",
        input_tokens=input_tokens,
        cached_tokens=cached,
        cache_creation_tokens=0,
        output_tokens=output,
        cost_usd=cost,
        cli_turns=cli_turns,
    )


def tokens(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("maxproxy_tokens_total", {"key": "bot", "model": MODEL, "kind": kind})


async def test_one_settled_turn_reaches_the_metrics_the_ledger_and_the_breaker(listeners: Listeners) -> None:
    limit = RateLimitInfo(status="rejected", resetsAt=time.time() + 3600, rateLimitType="five_hour")
    answered = CliTurn(None, Result(subtype="success", result="{}"))
    listeners.bus.note(settled((70, 30, 20), 0.25, answered, CliTurn(limit, None)))
    # all in the publisher's step: nothing was awaited since the note
    assert [tokens(listeners.metrics, kind) for kind in ("input", "cached", "output")] == [70, 30, 20]
    cost = listeners.metrics.registry.get_sample_value("maxproxy_cost_usd_total", {"key": "bot", "model": MODEL})
    assert cost == 0.25
    assert listeners.ledger.spent("bot", 1) == 120  # the budgets see it at once
    with pytest.raises(errors.RateLimited):  # the second CLI turn's limit opened it
        listeners.breaker.check("sonnet")
    await listeners.ledger.flush()
    row = UsageRow(today().isoformat(), "bot", MODEL, 1, 70, 30, 20, 0.25)
    assert await listeners.rows.since(today().isoformat()) == [row]
    assert [type(item) for item in listeners.heard] == [Alert, TurnSettled]  # the opening, told on the bus meanwhile


async def test_a_turn_that_used_nothing_is_no_usage_but_the_breaker_reads_it(listeners: Listeners) -> None:
    limit = "You've hit your 5-hour limit · resets 5pm"
    refused = Result(subtype="error_during_execution", is_error=True, result=limit, api_error_status=429)
    listeners.bus.note(settled((0, 0, 0), 0.0, CliTurn(None, refused)))
    assert tokens(listeners.metrics, "input") is None
    assert listeners.ledger.spent("bot", 1) == 0
    await listeners.ledger.flush()
    assert await listeners.rows.since(today().isoformat()) == []
    with pytest.raises(errors.RateLimited):
        listeners.breaker.check("sonnet")
