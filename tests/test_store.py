"""The store's one connection under cancellation: a statement runs on its own thread and cannot be stopped, so a
caller that leaves must not let the connection close under it (that is a segfault in SQLite, seen in CI). The
statement here is held inside a user function until the test lets it go, so "still running" is a fact, not a guess
about how long a query takes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from maxproxy.store import ResponseStore, Store, StoredResponse

from tests.conftest import wait_for


class Recording(sqlite3.Connection):
    """The store's connection, telling whether `close` came while a statement was still running: from `execute` to
    the end of its `fetchall` (the store's whole statement), with `hold()` keeping it inside until the test says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inside = threading.Event()  # a statement is in `hold()`
        self.release = threading.Event()  # the test lets it return
        self.idle = threading.Event()  # no statement runs
        self.idle.set()
        self.statements_done = 0
        self.close_called = threading.Event()
        self.closed_under_statement = False
        self.create_function("hold", 0, self._hold)

    def _hold(self) -> int:
        self.inside.set()
        self.release.wait(30)  # a safety bound for a broken test only; the test always sets it
        self.inside.clear()
        return 7

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.idle.clear()
        try:
            return self.cursor(Tracked).execute(sql, parameters)
        except BaseException:
            self.done()
            raise

    def done(self) -> None:
        self.statements_done += 1
        self.idle.set()

    def close(self) -> None:
        self.close_called.set()
        if not self.idle.is_set():
            self.closed_under_statement = True
            self.idle.wait(30)  # record the fault, but do not crash the test run with it (a segfault)
        super().close()


class Tracked(sqlite3.Cursor):
    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        finally:
            connection = self.connection
            assert isinstance(connection, Recording)
            connection.done()


class Watched(asyncio.Lock):
    """The store's lock, telling whether someone had to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.contended = False

    async def acquire(self) -> Literal[True]:
        if self.locked():
            self.contended = True
        return await super().acquire()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open store whose connection is a `Recording` one."""
    store = Store(tmp_path / "s.sqlite3")
    await store.open()
    assert store._db is not None
    store._db.close()
    db = store._db = sqlite3.connect(store.path, check_same_thread=False, isolation_level=None, factory=Recording)
    yield store
    db.release.set()  # a failed test never leaves the statement's thread waiting
    await store.close()


def held(store: Store) -> Recording:
    assert isinstance(store._db, Recording)
    return store._db


async def test_closing_waits_for_the_statement_of_a_caller_that_left(store: Store) -> None:
    db = held(store)
    lock = store._lock = Watched()
    slow = asyncio.create_task(store._run("SELECT hold()"))
    await wait_for(db.inside.is_set)  # the statement is under way on its thread
    slow.cancel()
    await asyncio.gather(slow, return_exceptions=True)
    assert slow.cancelled()
    closing = asyncio.create_task(store.close())
    # Either close is already closing the connection (wrong) or it waits for the statement's lock (right).
    await wait_for(lambda: db.close_called.is_set() or lock.contended)
    assert not closing.done()
    db.release.set()
    await closing
    assert db.statements_done == 1
    assert db.close_called.is_set()
    assert not db.closed_under_statement, "the connection was closed while a cancelled caller's statement ran"
    with pytest.raises(sqlite3.ProgrammingError):
        db.execute("SELECT 1")  # closed, after the statement
    with pytest.raises(RuntimeError, match="not open"):
        await store._run("SELECT 1")


async def test_a_cancelled_callers_statement_keeps_the_connection_taken(store: Store) -> None:
    db = held(store)
    slow = asyncio.create_task(store._run("SELECT hold()"))
    await wait_for(db.inside.is_set)
    slow.cancel()
    await asyncio.gather(slow, return_exceptions=True)
    assert store._lock.locked()  # the statement still runs: no other statement may start on the connection
    db.release.set()
    await wait_for(lambda: not store._lock.locked())  # freed when the statement is done, not before
    assert db.statements_done == 1
    assert await store._run("SELECT 1") == [(1,)]


def stored(response_id: str, owner: str = "alice", created: float = 1000.0) -> StoredResponse:
    return StoredResponse(
        id=response_id, owner=owner, created=created, response=b'{"id": 1}', input=b"[]", history=b"[]"
    )


@pytest.fixture
async def responses(tmp_path: Path) -> AsyncIterator[ResponseStore]:
    store = Store(tmp_path / "r.sqlite3")
    await store.open()
    yield ResponseStore(store)
    await store.close()


async def test_stored_responses_are_their_owners_until_they_expire(responses: ResponseStore, tmp_path: Path) -> None:
    await responses.save(stored("resp_a"), [("msg_1", b'{"id": "msg_1"}')])
    await responses.save(stored("resp_b", owner="bob", created=2000.0), [("msg_1", b'{"id": "bob"}')])
    assert await responses.get("alice", "resp_a", since=0) == stored("resp_a")
    assert await responses.get("bob", "resp_a", since=0) is None  # another owner's id does not exist
    assert await responses.get("alice", "resp_a", since=1500) is None  # expired, even before a sweep
    assert await responses.items("alice", ["msg_1", "msg_x"], since=0) == {"msg_1": b'{"id": "msg_1"}'}
    assert await responses.items("bob", ["msg_1"], since=0) == {"msg_1": b'{"id": "bob"}'}
    assert await responses.items("alice", ["msg_1"], since=1500) == {}
    assert await responses.expire(1500) == 1
    assert await responses.items("alice", ["msg_1"], since=0) == {}  # the items went with their response
    assert not await responses.delete("alice", "resp_b", since=0)
    assert await responses.delete("bob", "resp_b", since=0)
    assert await responses.items("bob", ["msg_1"], since=0) == {}


async def test_stored_responses_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite3")
    await store.open()
    await ResponseStore(store).save(stored("resp_a"), [])
    await store.close()
    again = Store(tmp_path / "r.sqlite3")
    await again.open()
    assert await ResponseStore(again).get("alice", "resp_a", since=0) == stored("resp_a")
    await again.close()


async def test_a_batch_is_all_or_nothing(responses: ResponseStore) -> None:
    store = responses._store
    with pytest.raises(sqlite3.OperationalError):
        await store._batch(
            [
                ("INSERT INTO responses VALUES ('r', 'o', 1, x'', x'', x'')", ()),
                ("INSERT INTO no_such_table VALUES (1)", ()),
            ]
        )
    assert await store._run("SELECT COUNT(*) FROM responses") == [(0,)]
    assert not store._lock.locked()
