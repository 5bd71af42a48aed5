"""Usage accounting: the ledger's rows in the store (one per key, model and UTC day, summed), its in-memory totals
for the token budgets, and those totals surviving a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from maxproxy.bus import CliTurn, TurnSettled
from maxproxy.store import Store, UsageRow, UsageStore
from maxproxy.usage import Ledger, seconds_to_midnight, today


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = Store(tmp_path / "state" / "maxproxy.db")
    await db.open()
    yield db
    await db.close()


def settled(
    key: str, model: str, prompt: int, cached: int, completion: int, cost: float, cli_turns: tuple[CliTurn, ...] = ()
) -> TurnSettled:
    """A turn's accounting as the turn core publishes it (`prompt` counts the cached tokens, as OpenAI's does)."""
    return TurnSettled(
        key=key,
        model=model,
        family="sonnet",
        input_tokens=prompt - cached,
        cached_tokens=cached,
        cache_creation_tokens=0,
        output_tokens=completion,
        cost_usd=cost,
        cli_turns=cli_turns,
    )


async def record(ledger: Ledger, key: str, model: str, prompt: int, cached: int, completion: int, cost: float) -> None:
    """One settled turn heard by the ledger, then written."""
    ledger.observe(settled(key, model, prompt, cached, completion, cost))
    await ledger.flush()


def day(days_ago: int) -> str:
    return (today() - dt.timedelta(days=days_ago)).isoformat()


async def test_a_settled_turn_writes_a_row_with_the_prompt_split(store: Store) -> None:
    rows = UsageStore(store)
    await record(Ledger(rows), "bot", "claude-sonnet-4", 100, 30, 20, 0.25)
    assert await rows.since(day(0)) == [
        UsageRow(
            day=day(0),
            key="bot",
            model="claude-sonnet-4",
            requests=1,
            input_tokens=70,
            cached_tokens=30,
            output_tokens=20,
            cost_usd=0.25,
        )
    ]


async def test_turns_of_one_day_key_and_model_are_summed(store: Store) -> None:
    rows = UsageStore(store)
    ledger = Ledger(rows)
    await record(ledger, "bot", "claude-sonnet-4", 100, 30, 20, 0.25)
    await record(ledger, "bot", "claude-sonnet-4", 50, 10, 5, 0.5)
    await record(ledger, "bot", "claude-opus-4", 7, 0, 3, 1.0)
    await record(ledger, "other", "claude-sonnet-4", 9, 0, 1, 0.0)
    found = {(r.key, r.model): r for r in await rows.since(day(0))}
    assert len(found) == 3
    sonnet = found[("bot", "claude-sonnet-4")]
    assert (sonnet.requests, sonnet.input_tokens, sonnet.cached_tokens, sonnet.output_tokens) == (2, 110, 40, 25)
    assert sonnet.cost_usd == pytest.approx(0.75)
    assert [r.model for r in await rows.since(day(0), key="bot")] == ["claude-opus-4", "claude-sonnet-4"]


async def test_spent_sums_today_and_the_days_before(store: Store) -> None:
    rows = UsageStore(store)
    for days_ago, tokens in ((3, 1000), (6, 200), (7, 30000)):
        await rows.add(UsageRow(day=day(days_ago), key="bot", model="claude-sonnet-4", input_tokens=tokens))
    ledger = Ledger(rows)
    await ledger.load()
    await record(ledger, "bot", "claude-sonnet-4", 40, 10, 5, 0.0)
    assert ledger.spent("bot", 1) == 45
    assert ledger.spent("bot", 4) == 1045
    assert ledger.spent("bot", 7) == 1245  # 7 days ago is outside the week
    assert ledger.spent("other", 7) == 0


async def test_load_restores_the_totals_after_a_restart(store: Store) -> None:
    ledger = Ledger(UsageStore(store))
    await record(ledger, "bot", "claude-sonnet-4", 100, 30, 20, 0.25)
    await record(ledger, "bot", "claude-opus-4", 10, 0, 2, 0.25)
    await UsageStore(store).add(UsageRow(day=day(2), key="bot", model="claude-opus-4", output_tokens=500))
    await UsageStore(store).add(UsageRow(day=day(30), key="bot", model="claude-opus-4", output_tokens=9999))
    assert ledger.spent("bot", 1) == 132
    await store.close()

    reopened = Store(store.path)
    await reopened.open()
    try:
        restored = Ledger(UsageStore(reopened))
        assert restored.spent("bot", 7) == 0
        await restored.load()
        assert (restored.spent("bot", 1), restored.spent("bot", 7)) == (132, 632)  # 30 days ago is not loaded
    finally:
        await reopened.close()


def test_seconds_to_midnight_is_within_a_day() -> None:
    assert 0 < seconds_to_midnight() <= 86400


async def test_a_heard_turn_counts_at_once_and_the_writer_stores_it(store: Store) -> None:
    rows = UsageStore(store)
    ledger = Ledger(rows)
    writer = asyncio.create_task(ledger.run())
    try:
        ledger.observe(settled("bot", "claude-sonnet-4", 10, 0, 5, 0.01))
        assert ledger.spent("bot", 1) == 15  # budgets see it before it is written
        async with asyncio.timeout(10):  # a bound for a broken writer only: the loop ends when the row is there
            while not (written := await rows.since(day(0))):
                await asyncio.sleep(0.01)
        [row] = written
        assert (row.requests, row.output_tokens) == (1, 5)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def test_a_flush_cancelled_mid_write_writes_the_row_once(store: Store) -> None:
    rows = UsageStore(store)
    ledger = Ledger(rows)
    ledger.observe(settled("bot", "claude-sonnet-4", 10, 0, 5, 0.0))
    flushing = asyncio.create_task(ledger.flush())
    await asyncio.sleep(0)  # its statement is under way on the store's thread
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    await ledger.flush()  # what shutdown does after cancelling the writer
    [row] = await rows.since(day(0))
    assert row.requests == 1
