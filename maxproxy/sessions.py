"""Sessions: conversations that last across requests, restarts and `kill -9`.

For each chat request: which conversation it is (`conversation.identify`), one turn at a time per conversation (a
second request waits up to `session_wait`, or gets 409 with `session_busy = "reject"`), and how its turn runs. A
request whose history, up to its last assistant message, is exactly the conversation's history after its previous
turn *continues* it: only the new messages go to the CLI — on the worker that still holds the conversation, or on a
worker started on its recorded CLI session (`--resume`). Anything else (a first turn, an edit, a regenerate, a deleted
turn, a changed system prompt) starts the conversation over from the history the client sent, so the wrong branch is
never continued; so does a resume that fails. After a turn that ended normally, the conversation's new history hash
and CLI session are recorded in the store; the worker stays with the conversation. A turn that stopped at tool calls
is recorded too, but its CLI session is not resumable (measured: a resumed session drops the unfinished turn), so
only the worker that waits can take the tool results; once it is gone, the follow-up replays the conversation. A
follow-up that answers exactly the calls a waiting turn issued (ids maxproxy made from the model's random tool_use
ids, so no other client can know them), from the same owner with the same model and system prompt, is that turn's
continuation even when the messages before the calls differ from the recorded history (OpenClaw moves its context
message, and may rewrite earlier ones).
Expired conversations are deleted with their transcripts; transcripts no conversation owns are deleted too, and
so are stored responses (the Responses API's `store`) older than the same TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from maxproxy import errors, prompt
from maxproxy.claude.command import Launch
from maxproxy.conversation import Identity, Split, canonical, chain
from maxproxy.pool import Lease, Pool
from maxproxy.settings import Model, Settings
from maxproxy.store import Conversation, ResponseStore, Store, new_conversation
from maxproxy.turns.messages import AssistantMessage, DeveloperMessage, SystemMessage, ToolMessage, TurnRequest

log = structlog.get_logger("maxproxy.sessions")
SWEEP_EVERY = 3600.0
ORPHAN_AGE = 3600.0  # a transcript nobody owns is kept this long (a worker may still be writing it)


class Busy(errors.ProxyError):
    status = 409
    type = "invalid_request_error"
    code = "conversation_busy"


@dataclass
class Plan:
    record: Conversation
    turn: prompt.Turn
    split: Split
    continuing: bool  # only the new messages go to the CLI
    resume: str | None  # the CLI session to resume when no worker holds the conversation


@dataclass(frozen=True)
class _Waiting:
    """A turn that stopped at tool calls, as its follow-up must match it."""

    conversation: str
    public_id: str
    owner: str
    name: str | None
    launch: str
    system: bytes  # the hash of the request's system and developer messages
    calls: frozenset[str]  # the ids of the calls the client was given


def launch_key(launch: Launch) -> str:
    system = hashlib.sha256((launch.system_prompt or "").encode()).hexdigest()[:16] if launch.system_prompt else ""
    return f"{launch.model}|{system}"


class Sessions:
    def __init__(self, settings: Settings, store: Store, pool: Pool, models: Mapping[str, Model]) -> None:
        self.settings = settings
        self.models = models  # the served model table (`catalog.Catalog`)
        self.store = store
        self.responses = ResponseStore(store)  # the Responses API's stored responses: same database, same TTL
        self.pool = pool
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._running: set[str] = set()  # conversations with a turn under way
        self._deleted: set[str] = set()  # deleted while a turn of theirs ran: that turn must not record them again
        self._waiting: dict[str, _Waiting] = {}  # by conversation id; no more than the workers that wait
        self._settling: set[asyncio.Task[None]] = set()  # turns being recorded

    # --- one turn at a time ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, identity: Identity, parts: Split) -> AsyncIterator[None]:
        """One turn at a time per conversation (named, or recognised by its history). A first turn of an unnamed
        conversation has nothing to share, so it waits for nobody."""
        if identity.name is None and parts.known == 0:
            yield
            return
        key = f"{identity.owner}:{identity.name}" if identity.name else f"{identity.owner}#{parts.head.hex()}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            if lock.locked() and self.settings.session_busy == "reject":
                raise Busy("This conversation already has a turn running", retry_after=1)
            try:
                async with asyncio.timeout(self.settings.session_wait):
                    await lock.acquire()
            except TimeoutError:
                raise Busy(
                    f"This conversation's previous turn still ran after {self.settings.session_wait:g}s",
                    retry_after=5,
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]

    # --- planning and recording ------------------------------------------------------------------------------------

    async def plan(
        self, identity: Identity, chat: TurnRequest, parts: Split, full: prompt.Turn, *, replay: bool = False
    ) -> Plan:
        """How this request's turn runs: `full` is its turn from the whole history; `replay` starts it over from that
        history (a resume failed)."""
        key = launch_key(full.launch)
        found = await self.store.find(identity.owner, identity.name, parts.head)
        new_part = chat.messages[parts.known :]
        tool_results = bool(new_part) and isinstance(new_part[0], ToolMessage)
        continuing = (
            not replay
            and found is not None
            and parts.known > 0
            and found.turns > 0
            and found.head == parts.head
            and found.launch == key
            # something still has the conversation's context: for tool results, only the worker that waits for them
            and (self.pool.waiting(found.id) if tool_results else self.pool.holds(found.id) or found.resumable)
            and not any(isinstance(m, SystemMessage | DeveloperMessage) for m in new_part)
        )
        if not continuing and not replay and tool_results:
            answered = await self._answered(identity, chat, parts, key)
            if answered is not None:
                found, continuing = answered, True
        if found is not None and not continuing and self.pool.waiting(found.id):
            self.pool.forget(found.id)  # its turn waits for results that will not come: free the worker
        if found is not None and continuing:
            turn = prompt.build(chat, self.settings, self.models, start=parts.known)
            resume = found.session_id if found.resumable else None
            return Plan(record=found, turn=turn, split=parts, continuing=True, resume=resume)
        record = found if found is not None and identity.name is not None else None
        if record is None:
            record = new_conversation(identity.owner, identity.name, chat.model, key)
        else:  # the client's own id, with a history that does not continue it: start it over
            record.launch, record.model, record.turns, record.resumable = key, chat.model, 0, False
        return Plan(record=record, turn=full, split=parts, continuing=False, resume=None)

    async def _answered(self, identity: Identity, chat: TurnRequest, parts: Split, key: str) -> Conversation | None:
        """The conversation whose waiting turn issued exactly the calls this request's tool messages answer, if the
        request may go on with it: same owner, name, model and system prompt, and no system message in the new part.
        """
        for conversation in [c for c in self._waiting if not self.pool.waiting(c)]:
            del self._waiting[conversation]  # that turn ended (tool_wait, the pool needed the process)
        wait = next((w for w in self._waiting.values() if w.calls == parts.answers), None)
        if (
            wait is None
            or (wait.owner, wait.name, wait.launch, wait.system) != (identity.owner, identity.name, key, parts.system)
            or any(isinstance(m, SystemMessage | DeveloperMessage) for m in chat.messages[parts.known :])
        ):
            return None
        record = await self.store.get(identity.owner, wait.public_id)
        return record if record is not None and record.id == wait.conversation and record.launch == key else None

    async def claim(self, plan: Plan, lease: Lease) -> None:
        """The worker's CLI session now belongs to this conversation: one it held before can no longer resume it
        (a reclaimed worker was rewound; its session's transcript goes on with this conversation)."""
        self._running.add(plan.record.id)
        session = lease.session_id
        if session is not None and session != plan.record.session_id:
            await self.store.disown(session, keep=plan.record.id)

    async def settle(self, plan: Plan, lease: Lease, answer: AssistantMessage | None) -> None:
        """After the turn: record it if it ended normally (`answer`); otherwise the CLI session holds a prompt the
        conversation does not, so the conversation must not be resumed from it. The record is written by a task
        `Sessions` owns: a request cancelled meanwhile does not cut it short, and `drain` waits for it before the
        store closes."""
        task = asyncio.create_task(self._settle(plan, lease, answer), name=f"settle-{plan.record.public_id}")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for the turns being recorded, before the store closes."""
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=timeout)

    async def _settle(self, plan: Plan, lease: Lease, answer: AssistantMessage | None) -> None:
        try:
            if answer is not None:
                await self.commit(plan, lease, answer)
            elif plan.continuing and plan.record.resumable and plan.record.id not in self._deleted:
                plan.record.resumable = False
                await self.store.save(plan.record)
        except Exception:  # the answer stands; the next turn starts over from the client's history
            log.exception("session_record_failed", session=plan.record.public_id)
        finally:
            self._running.discard(plan.record.id)
            self._deleted.discard(plan.record.id)

    async def commit(self, plan: Plan, lease: Lease, answer: AssistantMessage) -> None:
        """The turn ended normally (or stopped at tool calls): record the conversation's new history and keep its
        worker for the next turn."""
        record = plan.record
        if record.id in self._deleted:
            return
        record.head = chain([canonical(answer)], chain(plan.split.canonicals))
        waiting = lease.waiting  # read before the awaits: a request cancelled meanwhile has released its lease
        record.session_id = lease.session_id
        record.resumable = record.session_id is not None and not waiting
        record.turns += 1
        record.last_used = time.time()
        await self.store.save(record)
        if record.session_id is not None:
            await self.store.disown(record.session_id, keep=record.id)
        if not lease.released:  # else the worker went back while this was written: nothing to keep
            lease.keep(record.id)
        if waiting:
            calls = frozenset(call.id for call in answer.tool_calls or [])
            self._waiting[record.id] = _Waiting(
                record.id, record.public_id, record.owner, record.name, record.launch, plan.split.system, calls
            )
        else:
            self._waiting.pop(record.id, None)

    async def forget(self, owner: str, public_id: str) -> bool:
        record = await self.store.get(owner, public_id)
        if record is None:
            return False
        self.pool.forget(record.id)
        self._waiting.pop(record.id, None)
        await self.store.delete(record.id)
        if record.id in self._running:
            self._deleted.add(record.id)
        if record.resumable and record.session_id:
            self._remove_transcript(record.session_id)
        return True

    # --- upkeep --------------------------------------------------------------------------------------------------

    @property
    def transcripts(self) -> Path:
        """Where the CLI files the transcripts of sessions run in maxproxy's workspace."""
        base = os.environ.get("CLAUDE_CONFIG_DIR") or str(Path.home() / ".claude")
        slug = "".join(c if c.isalnum() else "-" for c in str(self.settings.workspace_path))
        return Path(base) / "projects" / slug

    def _remove_transcript(self, session_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.transcripts / f"{session_id}.jsonl").unlink()

    @property
    def cutoff(self) -> float:
        """Conversations unused and responses stored before this time have expired."""
        return time.time() - self.settings.session_ttl_days * 86400

    async def sweep(self) -> None:
        """Delete expired conversations with their transcripts, transcripts that no conversation owns, and expired
        stored responses."""
        cutoff = self.cutoff
        if expired := await self.responses.expire(cutoff):
            log.info("responses_expired", responses=expired)
        for record in await self.store.expired(cutoff):
            self.pool.forget(record.id)
            self._waiting.pop(record.id, None)
            await self.store.delete(record.id)
            if record.resumable and record.session_id:
                self._remove_transcript(record.session_id)
            log.info("conversation_expired", conversation=record.id, turns=record.turns)
        in_use = set(self.pool.sessions())
        now = time.time()
        for path in await asyncio.to_thread(lambda: list(self.transcripts.glob("*.jsonl"))):
            session = path.stem
            if session in in_use or await self.store.owns(session):
                continue
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > ORPHAN_AGE:
                    path.unlink()

    async def run_sweeps(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a failed sweep is retried at the next one; it must not end the loop
                log.exception("session_sweep_failed")
            await asyncio.sleep(SWEEP_EVERY)

    def describe(self, record: Conversation) -> dict[str, Any]:
        return {
            "id": record.public_id,
            "object": "session",
            "model": record.model,
            "created": int(record.created),
            "last_used": int(record.last_used),
            "turns": record.turns,
        }
