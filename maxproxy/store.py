"""The store: embedded SQLite (WAL) in the state directory, so that conversations and usage outlive a restart or a
`kill -9` of maxproxy. A conversation row maps a conversation (owner, the client's name for it or none, the hash of
its history after the last turn) to the CLI session that holds it, whether that session can still be resumed, its
model and its use. A usage row sums one API key's requests, tokens and cost for one model on one UTC day. Queries are
small and indexed; they run on a worker thread so the event loop never waits on the disk. A stored response (the
Responses API's `store`) keeps its owner, its final response object, the request's own input items and the whole
input it was answered from (to go on from it), with an index of its items by id (for `item_reference`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT,
    head BLOB NOT NULL,
    session_id TEXT,
    resumable INTEGER NOT NULL DEFAULT 0,
    model TEXT NOT NULL,
    launch TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_by_name ON conversations(owner, name) WHERE name IS NOT NULL;
CREATE INDEX IF NOT EXISTS conversations_by_head ON conversations(owner, head) WHERE name IS NULL;
CREATE INDEX IF NOT EXISTS conversations_by_use ON conversations(last_used);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key, model)
);
CREATE TABLE IF NOT EXISTS usage_hours (
    hour INTEGER NOT NULL,
    key TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, key)
);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    response BLOB NOT NULL,
    input BLOB NOT NULL,
    history BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses(created);
CREATE TABLE IF NOT EXISTS response_items (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    item BLOB NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE INDEX IF NOT EXISTS response_items_by_response ON response_items(response_id);
"""


class Conversation(msgspec.Struct):
    id: str
    owner: str
    name: str | None
    head: bytes
    session_id: str | None
    resumable: bool
    model: str
    launch: str  # the spawn key (model, system prompt digest) the session was started with
    created: float
    last_used: float
    turns: int

    @property
    def public_id(self) -> str:
        return self.name or self.id


_COLUMNS = "id, owner, name, head, session_id, resumable, model, launch, created, last_used, turns"
_SELECT = (
    "SELECT id, owner, name, head, session_id, resumable, model, launch, created, last_used, turns FROM conversations"
)
_INSERT = (
    "INSERT OR REPLACE INTO conversations (id, owner, name, head, session_id, resumable, model, launch, created, "
    "last_used, turns) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def _row(row: tuple[object, ...]) -> Conversation:
    return msgspec.convert(dict(zip(_COLUMNS.split(", "), row, strict=True)), Conversation, strict=False)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the one connection

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            return db

        self._db = await asyncio.to_thread(connect)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            async with self._lock:  # after the statement still running, if any: closing under it would crash
                await asyncio.to_thread(db.close)

    async def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        db = self._db
        if db is None:
            raise RuntimeError("store not open")
        await self._lock.acquire()
        # A statement on its thread cannot be stopped: if the caller is cancelled, the lock stays held until the
        # statement is done (measured: closing the connection under a running statement is a segfault).
        done = asyncio.get_running_loop().run_in_executor(None, lambda: db.execute(sql, args).fetchall())
        done.add_done_callback(_released(self._lock))
        return await asyncio.shield(done)

    async def _batch(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        """Several statements as one transaction (all or none), under the one lock like `_run`."""
        db = self._db
        if db is None:
            raise RuntimeError("store not open")

        def run() -> None:
            db.execute("BEGIN")
            try:
                for sql, args in statements:
                    db.execute(sql, args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._lock.acquire()
        done = asyncio.get_running_loop().run_in_executor(None, run)
        done.add_done_callback(_released(self._lock))
        await asyncio.shield(done)

    async def find(self, owner: str, name: str | None, head: bytes) -> Conversation | None:
        if name is not None:
            rows = await self._run(_SELECT + " WHERE owner=? AND name=?", (owner, name))
        else:
            rows = await self._run(
                _SELECT + " WHERE owner=? AND name IS NULL AND head=? ORDER BY last_used DESC LIMIT 1",
                (owner, head),
            )
        return _row(rows[0]) if rows else None

    async def get(self, owner: str, public_id: str) -> Conversation | None:
        rows = await self._run(
            _SELECT + " WHERE owner=? AND (name=? OR (name IS NULL AND id=?))",
            (owner, public_id, public_id),
        )
        return _row(rows[0]) if rows else None

    async def save(self, conversation: Conversation) -> None:
        await self._run(
            _INSERT,
            (
                conversation.id,
                conversation.owner,
                conversation.name,
                conversation.head,
                conversation.session_id,
                int(conversation.resumable),
                conversation.model,
                conversation.launch,
                conversation.created,
                conversation.last_used,
                conversation.turns,
            ),
        )

    async def disown(self, session_id: str, keep: str | None = None) -> None:
        """A session now holds another conversation: the others can no longer be resumed from it."""
        await self._run("UPDATE conversations SET resumable=0 WHERE session_id=? AND id IS NOT ?", (session_id, keep))

    async def owns(self, session_id: str) -> bool:
        rows = await self._run("SELECT 1 FROM conversations WHERE session_id=? AND resumable=1 LIMIT 1", (session_id,))
        return bool(rows)

    async def owned_by(self, owner: str) -> list[Conversation]:
        rows = await self._run(_SELECT + " WHERE owner=? ORDER BY last_used DESC", (owner,))
        return [_row(r) for r in rows]

    async def delete(self, conversation_id: str) -> None:
        await self._run("DELETE FROM conversations WHERE id=?", (conversation_id,))

    async def expired(self, before: float) -> list[Conversation]:
        rows = await self._run(_SELECT + " WHERE last_used < ?", (before,))
        return [_row(r) for r in rows]


def _released(lock: asyncio.Lock) -> Callable[[asyncio.Future[Any]], None]:
    def release(future: asyncio.Future[Any]) -> None:
        lock.release()
        if not future.cancelled():
            future.exception()  # retrieved: a cancelled caller's failed statement is not "never retrieved"

    return release


class UsageRow(msgspec.Struct):
    day: str  # YYYY-MM-DD, UTC
    key: str
    model: str
    requests: int = 0
    input_tokens: int = 0  # prompt tokens not read from the cache (cache writes included)
    cached_tokens: int = 0  # prompt tokens read from the cache
    output_tokens: int = 0
    cost_usd: float = 0.0  # as the CLI reports it

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cached_tokens + self.output_tokens


_USAGE_COLUMNS = "day, key, model, requests, input_tokens, cached_tokens, output_tokens, cost_usd"


class HourRow(msgspec.Struct):
    """A key's usage in one UTC hour (the status page's last 24 hours); rows older than two days are deleted."""

    hour: int  # epoch seconds at the start of the hour
    key: str
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


class UsageStore:
    """The usage rows of a `Store` (same database, same connection)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, row: UsageRow, hour: int | None = None) -> None:
        """Add `row` to its day's row and, with `hour`, to its key's row for that hour (one transaction)."""
        values = (row.day, row.key, row.model, row.requests, row.input_tokens, row.cached_tokens, row.output_tokens)
        statements: list[tuple[str, tuple[object, ...]]] = [
            (
                "INSERT INTO usage (day, key, model, requests, input_tokens, cached_tokens, output_tokens, "
                "cost_usd) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (day, key, model) DO UPDATE "
                "SET requests=requests+excluded.requests, input_tokens=input_tokens+excluded.input_tokens, "
                "cached_tokens=cached_tokens+excluded.cached_tokens, "
                "output_tokens=output_tokens+excluded.output_tokens, cost_usd=cost_usd+excluded.cost_usd",
                (*values, row.cost_usd),
            )
        ]
        if hour is not None:
            statements.append(
                (
                    "INSERT INTO usage_hours (hour, key, requests, tokens, cost_usd) VALUES (?,?,?,?,?) "
                    "ON CONFLICT (hour, key) DO UPDATE SET requests=requests+excluded.requests, "
                    "tokens=tokens+excluded.tokens, cost_usd=cost_usd+excluded.cost_usd",
                    (hour, row.key, row.requests, row.total_tokens, row.cost_usd),
                )
            )
        await self._store._batch(statements)

    async def hours(self, since: int) -> list[HourRow]:
        """Every key's hourly rows from the hour starting at `since`; older ones than two days before it go."""
        await self._store._run("DELETE FROM usage_hours WHERE hour < ?", (since - 2 * 86400,))
        rows = await self._store._run(
            "SELECT hour, key, requests, tokens, cost_usd FROM usage_hours WHERE hour >= ? ORDER BY hour, key", (since,)
        )
        names = ("hour", "key", "requests", "tokens", "cost_usd")
        return [msgspec.convert(dict(zip(names, r, strict=True)), HourRow, strict=False) for r in rows]

    async def since(self, day: str, key: str | None = None) -> list[UsageRow]:
        sql = (
            "SELECT day, key, model, requests, input_tokens, cached_tokens, output_tokens, cost_usd FROM usage "
            "WHERE day >= ?"
        )
        args: tuple[object, ...] = (day,)
        if key is not None:
            sql, args = sql + " AND key = ?", (day, key)
        rows = await self._store._run(sql + " ORDER BY day, key, model", args)
        names = _USAGE_COLUMNS.split(", ")
        return [msgspec.convert(dict(zip(names, r, strict=True)), UsageRow, strict=False) for r in rows]


class StoredResponse(msgspec.Struct):
    """One stored response: JSON blobs as they are sent or read back (`response` is the final response object,
    `input` the request's own items with ids, `history` the whole input the response was answered from)."""

    id: str
    owner: str
    created: float  # time.time() when it was stored; it expires `session_ttl_days` later
    response: bytes
    input: bytes
    history: bytes


_RESPONSE_COLUMNS = "id, owner, created, response, input, history"
_RESPONSE_SELECT = "SELECT id, owner, created, response, input, history FROM responses"


class ResponseStore:
    """The stored responses of a `Store` (same database, same connection). Every read is by owner and not older
    than `since` (the expiry cutoff), so an expired row is gone for its owner before the sweep deletes it."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def save(self, row: StoredResponse, items: list[tuple[str, bytes]]) -> None:
        """Store `row` with its items (id, JSON) for `item_reference`; a later item with the same id wins."""
        statements: list[tuple[str, tuple[object, ...]]] = [
            (
                "INSERT OR REPLACE INTO responses (id, owner, created, response, input, history) VALUES (?,?,?,?,?,?)",
                (row.id, row.owner, row.created, row.response, row.input, row.history),
            )
        ]
        statements += [
            (
                "INSERT OR REPLACE INTO response_items (owner, id, response_id, item) VALUES (?,?,?,?)",
                (row.owner, item_id, row.id, item),
            )
            for item_id, item in items
        ]
        await self._store._batch(statements)

    async def get(self, owner: str, response_id: str, since: float) -> StoredResponse | None:
        rows = await self._store._run(
            _RESPONSE_SELECT + " WHERE id=? AND owner=? AND created >= ?",
            (response_id, owner, since),
        )
        names = _RESPONSE_COLUMNS.split(", ")
        return msgspec.convert(dict(zip(names, rows[0], strict=True)), StoredResponse) if rows else None

    async def items(self, owner: str, ids: list[str], since: float) -> dict[str, bytes]:
        """The items with these ids (JSON) in the owner's unexpired responses."""
        if not ids:
            return {}
        rows = await self._store._run(
            "SELECT i.id, i.item FROM response_items i JOIN responses r ON r.id = i.response_id "
            "WHERE i.owner=? AND r.owner=? AND r.created >= ? AND i.id IN (SELECT value FROM json_each(?))",
            (owner, owner, since, msgspec.json.encode(ids).decode()),
        )
        found: dict[str, bytes] = {}
        for item_id, item in rows:
            assert isinstance(item_id, str)
            assert isinstance(item, bytes)
            found[item_id] = item
        return found

    async def delete(self, owner: str, response_id: str, since: float) -> bool:
        if await self.get(owner, response_id, since) is None:
            return False
        await self._store._batch(
            [
                ("DELETE FROM response_items WHERE response_id=?", (response_id,)),
                ("DELETE FROM responses WHERE id=? AND owner=?", (response_id, owner)),
            ]
        )
        return True

    async def expire(self, before: float) -> int:
        """Delete the responses stored before `before` and their items; how many responses went."""
        rows = await self._store._run("SELECT COUNT(*) FROM responses WHERE created < ?", (before,))
        await self._store._batch(
            [
                (
                    "DELETE FROM response_items WHERE response_id IN (SELECT id FROM responses WHERE created < ?)",
                    (before,),
                ),
                ("DELETE FROM responses WHERE created < ?", (before,)),
            ]
        )
        count = rows[0][0]
        assert isinstance(count, int)
        return count


def new_conversation(owner: str, name: str | None, model: str, launch: str) -> Conversation:
    now = time.time()
    return Conversation(
        id="conv_" + uuid.uuid4().hex[:24],
        owner=owner,
        name=name,
        head=b"",
        session_id=None,
        resumable=False,
        model=model,
        launch=launch,
        created=now,
        last_used=now,
        turns=0,
    )
