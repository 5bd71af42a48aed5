"""The store's one connection under cancellation: a statement runs on its own thread and cannot be stopped, so a
caller that leaves must not let the connection close under it (that is a segfault in SQLite, seen in CI)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from maxproxy.store import Store

SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT count(*) FROM c"


async def test_closing_waits_for_the_statement_of_a_caller_that_left(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    await store.open()
    started = time.monotonic()
    [[count]] = await store._run(SLOW)
    took = time.monotonic() - started
    assert count == 2_000_000
    slow = asyncio.create_task(store._run(SLOW))
    await asyncio.sleep(min(0.05, took / 4))  # the statement is under way on its thread
    slow.cancel()
    await store.close()  # waits for the statement instead of closing under it
    assert slow.cancelled()
    with pytest.raises(RuntimeError, match="not open"):
        await store._run("SELECT 1")
