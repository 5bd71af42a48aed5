"""Conversations that last: continuation on the worker that holds the conversation, resume after a restart or a
`kill -9`, edits that never continue the wrong branch, one turn at a time, and owners kept apart."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from maxproxy.bench.daemon import daemon
from maxproxy.bench.upstream import FakeUpstream, Reply
from maxproxy.pool import Pool
from maxproxy.state import POOL, SESSIONS
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import CHAT, holding, live_workers


def pool_of(proxy: Proxy) -> Pool:
    return proxy.app[POOL]


def texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of each message the upstream received, system-role entries left out."""
    out = []
    for m in messages:
        if m["role"] == "system":
            continue
        content = m["content"]
        text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
        out.append((m["role"], text))
    return out


async def chat(proxy: Proxy, history: list[ChatCompletionMessageParam], **kw: Any) -> str:
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=history, **kw)
    text = answer.choices[0].message.content or ""
    history.append({"role": "assistant", "content": text})
    await wait_for(lambda: pool_of(proxy).busy == 0)
    return text


async def test_turn_three_continues_on_the_held_worker(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("Noted, Alice."), Reply.text("Tea it is."), Reply.text("You are Alice."))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "My name is Alice"}]
    await chat(proxy, history)
    history.append({"role": "user", "content": "I like tea"})
    await chat(proxy, history)
    [held] = holding(pool_of(proxy))
    history.append({"role": "user", "content": "What is my name?"})
    await chat(proxy, history)
    assert held.lines_written == 1  # only turn 3's new user message went to the CLI
    assert texts(upstream.messages_requests[-1].messages) == [
        ("user", "My name is Alice"),
        ("assistant", "Noted, Alice."),
        ("user", "I like tea"),
        ("assistant", "Tea it is."),
        ("user", "What is my name?"),
    ]
    assert holding(pool_of(proxy)) == [held]


async def test_an_edited_turn_never_continues_the_old_branch(proxy: Proxy, upstream: FakeUpstream) -> None:
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about cats"}]
    await chat(proxy, history)
    history.append({"role": "user", "content": "ORIGINAL follow-up"})
    await chat(proxy, history)
    history[-2:] = [{"role": "user", "content": "EDITED follow-up"}]  # the client edits turn 2 and resends
    await chat(proxy, history)
    seen = texts(upstream.messages_requests[-1].messages)
    assert ("user", "EDITED follow-up") in seen
    assert all("ORIGINAL" not in text for _, text in seen)


async def test_a_named_conversation_runs_one_turn_at_a_time(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(session_busy="reject")
    upstream.default = Reply.text("slow " * 20, pieces=20, delay=0.05)
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"X-Session-Id": "chat-42"}
    first = asyncio.create_task(proxy.http.post(proxy.url + CHAT, json=body, headers=headers))
    await wait_for(lambda: bool(upstream.messages_requests))
    async with proxy.http.post(proxy.url + CHAT, json=body, headers=headers) as second:
        assert second.status == 409
        assert (await second.json())["error"]["code"] == "conversation_busy"
    response = await first
    assert response.status == 200
    response.close()


async def test_concurrent_turns_of_one_conversation_are_serialised(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("slow " * 10, pieces=10, delay=0.05)
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}

    async def one() -> int:
        async with proxy.http.post(proxy.url + CHAT, json=body, headers={"X-Session-Id": "chat-7"}) as response:
            await response.read()
            return response.status

    assert list(await asyncio.gather(one(), one(), one())) == [200, 200, 200]
    turns = sorted(upstream.messages_requests, key=lambda r: r.at)
    assert len(turns) == 3
    # Each turn reached the upstream only after the upstream had written the whole previous answer: never
    # interleaved. (Causal order, no tolerance: the next turn can only start once the CLI has read that answer.)
    for previous, following in itertools.pairwise(turns):
        assert previous.answered is not None
        assert following.at > previous.answered


async def test_two_keys_with_identical_histories_are_two_conversations(
    cli_env: Path, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(api_keys=["key-a", "key-b"])
    ids = {}
    for key in ("key-a", "key-b"):
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "same words"}]}
        async with proxy.http.post(proxy.url + CHAT, json=body, headers=headers) as response:
            ids[key] = response.headers["x-session-id"]
        async with proxy.http.get(proxy.url + "/v1/sessions", headers=headers) as response:
            listed = [s["id"] for s in (await response.json())["data"]]
        assert listed == [ids[key]]  # each key sees its own, and only its own
    assert ids["key-a"] != ids["key-b"]
    async with proxy.http.delete(
        proxy.url + f"/v1/sessions/{ids['key-a']}", headers={"Authorization": "Bearer key-b"}
    ) as response:
        assert response.status == 404  # another key's conversation does not exist for this one
    async with proxy.http.delete(
        proxy.url + f"/v1/sessions/{ids['key-a']}", headers={"Authorization": "Bearer key-a"}
    ) as response:
        assert (await response.json())["deleted"] is True


async def test_restart_resumes_the_conversation_from_its_session(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    first = await start_proxy()
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Remember 7"}]
    upstream.push(Reply.text("Remembered."), Reply.text("Still 7."), Reply.text("It was 7."))
    await chat(first, history)
    history.append({"role": "user", "content": "And now?"})
    await chat(first, history)
    await first.server.close()  # maxproxy stops; its workers with it
    second = await start_proxy()
    history.append({"role": "user", "content": "What number?"})
    async with second.http.post(second.url + CHAT, json={"model": "claude-sonnet-4", "messages": history}) as r:
        assert r.status == 200
    [worker] = holding(pool_of(second))
    assert worker.lines_written == 1  # resumed from the CLI session: only the new message was written
    assert texts(upstream.messages_requests[-1].messages)[:4] == [
        ("user", "Remember 7"),
        ("assistant", "Remembered."),
        ("user", "And now?"),
        ("assistant", "Still 7."),
    ]


async def test_a_lost_transcript_falls_back_to_the_clients_history(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    first = await start_proxy()
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Remember 9"}]
    await chat(first, history)
    transcripts = first.app[SESSIONS].transcripts
    await first.server.close()
    for path in transcripts.glob("*.jsonl"):
        path.unlink()  # the CLI's transcript is gone
    second = await start_proxy()
    history.append({"role": "user", "content": "What number?"})
    answer = await second.openai.chat.completions.create(model="claude-sonnet-4", messages=history)
    assert answer.choices[0].message.content
    assert ("user", "Remember 9") in texts(upstream.messages_requests[-1].messages)


async def test_kill_9_between_turns_loses_nothing(cli_env: Path, upstream: FakeUpstream, tmp_path: Path) -> None:
    env = {**os.environ, "MAXPROXY_STATE_DIR": str(tmp_path / "state"), "MAXPROXY_LOG_FORMAT": "json"}
    history: list[dict[str, str]] = [{"role": "user", "content": "Remember 11"}]
    async with aiohttp.ClientSession() as http:
        async with daemon(env) as (proc, url, _):
            for follow_up in ("And now?", None):
                async with http.post(url + CHAT, json={"model": "claude-sonnet-4", "messages": history}) as r:
                    answer = (await r.json())["choices"][0]["message"]["content"]
                history.append({"role": "assistant", "content": answer})
                if follow_up:
                    history.append({"role": "user", "content": follow_up})
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        history.append({"role": "user", "content": "What number?"})
        async with daemon(env) as (proc, url, records):
            async with http.post(url + CHAT, json={"model": "claude-sonnet-4", "messages": history}) as r:
                assert r.status == 200
            await wait_for(lambda: any(x.get("event") == "request" and x.get("path") == CHAT for x in records))
    [access] = [x for x in records if x.get("event") == "request" and x.get("path") == CHAT]
    assert access["continued"] is True  # resumed: the CLI held turns 1-2 already
    seen = texts(upstream.messages_requests[-1].messages)
    assert seen[:2] == [("user", "Remember 11"), ("assistant", "Hello from fake upstream!")]


async def test_expiry_removes_rows_and_transcripts(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(session_ttl_days=1)
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "short-lived"}]
    await chat(proxy, history)
    sessions = proxy.app[SESSIONS]
    [record] = await sessions.store.owned_by("local")  # recorded before the answer went out
    assert record.session_id
    transcript = sessions.transcripts / f"{record.session_id}.jsonl"
    assert transcript.exists()
    await sessions.sweep()
    assert await sessions.store.owned_by("local") == [record]  # used within the TTL: kept
    # Last used a day and a second ago (rather than a tiny TTL and a sleep that must outlast it).
    await sessions.store.save(msgspec.structs.replace(record, last_used=time.time() - 86401))
    await sessions.sweep()
    assert await sessions.store.owned_by("local") == []
    assert not transcript.exists()


async def test_a_failed_turn_is_not_resumed_twice(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    first = await start_proxy()
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one"}]
    upstream.push(Reply.text("first answer"), Reply.error(500))
    await chat(first, history)
    history.append({"role": "user", "content": "two"})
    async with first.http.post(first.url + CHAT, json={"model": "claude-sonnet-4", "messages": history}) as r:
        assert r.status == 502  # the continuation failed upstream
    await wait_for(lambda: pool_of(first).busy == 0)
    await first.server.close()
    second = await start_proxy()  # no worker holds the conversation: it must not resume the failed prompt
    answer = await second.openai.chat.completions.create(model="claude-sonnet-4", messages=history)
    assert answer.choices[0].message.content
    assert texts(upstream.messages_requests[-1].messages) == [
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "two"),
    ]


async def test_a_session_deleted_during_its_turn_stays_deleted(proxy: Proxy, upstream: FakeUpstream) -> None:
    headers = {"X-Session-Id": "doomed"}
    history: list[dict[str, str]] = [{"role": "user", "content": "hi"}]
    async with proxy.http.post(
        proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": history}, headers=headers
    ) as response:
        history += [
            {"role": "assistant", "content": (await response.json())["choices"][0]["message"]["content"]},
            {"role": "user", "content": "and then?"},
        ]
    await wait_for(lambda: pool_of(proxy).busy == 0)
    upstream.push(Reply.text("slow " * 10, pieces=10, delay=0.05))
    body = {"model": "claude-sonnet-4", "messages": history}
    turn = asyncio.create_task(proxy.http.post(proxy.url + CHAT, json=body, headers=headers))
    await wait_for(lambda: len(upstream.messages_requests) == 2)
    async with proxy.http.delete(proxy.url + "/v1/sessions/doomed") as response:
        assert response.status == 200
    (await turn).close()
    await wait_for(lambda: pool_of(proxy).busy == 0)
    async with proxy.http.get(proxy.url + "/v1/sessions") as response:
        assert (await response.json())["data"] == []


async def test_a_session_in_use_is_never_resumed_by_a_second_process(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(max_workers=2, min_idle=0)
    pool = pool_of(proxy)
    first: list[ChatCompletionMessageParam] = [{"role": "user", "content": "first"}]
    await chat(proxy, first)
    [worker] = holding(pool)
    session = worker.session_id
    # Another conversation reclaims the worker: emptied, and still running the first conversation's CLI session.
    await chat(proxy, [{"role": "user", "content": "other"}])
    assert holding(pool) == [worker]
    assert worker.session_id == session
    first.append({"role": "user", "content": "second"})
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=first)
    assert answer.choices[0].message.content
    assert sum(1 for w in live_workers(pool) if w.session_id == session) == 1  # no second process on it
    assert pool.counts["spawned"] == 1
    # Replayed instead, exactly once: the conversation reached the model as the client sent it.
    assert texts(upstream.messages_requests[-1].messages) == [
        ("user", "first"),
        ("assistant", "Hello from fake upstream!"),
        ("user", "second"),
    ]


async def test_a_held_conversation_left_alone_is_retired_and_resumes_from_its_session(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """`idle_timeout` applies to held conversations too: the worker is retired (not rewound), so that the next turn
    resumes the CLI session on a new process (or replays the history when it cannot)."""
    proxy = await start_proxy(idle_timeout=0.5)
    pool = pool_of(proxy)
    upstream.push(Reply.text("Remembered."), Reply.text("It was 7."))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Remember 7"}]
    await chat(proxy, history)
    [worker] = holding(pool)
    held_at = time.monotonic()
    await wait_for(lambda: pool.counts["retired:idle"] == 1, timeout=15)
    took = time.monotonic() - held_at
    await wait_for(lambda: not worker.alive, timeout=15)
    print(f"held conversation retired {took:.2f}s after its turn, exited after {time.monotonic() - held_at:.2f}s")
    assert took >= 0.5  # never before its time
    assert pool.counts["retired:reset_failed"] == pool.counts["retired:replayed_history"] == 0
    assert not holding(pool)
    history.append({"role": "user", "content": "What number?"})
    await chat(proxy, history)
    [resumed] = holding(pool)
    assert resumed is not worker
    assert resumed.lines_written == 1  # resumed from the CLI session: only the new message was written
    assert texts(upstream.messages_requests[-1].messages) == [
        ("user", "Remember 7"),
        ("assistant", "Remembered."),
        ("user", "What number?"),
    ]


@pytest.mark.parametrize("protocol", ["chat", "responses"])
async def test_a_follow_up_sent_the_moment_a_stream_ends_continues(
    proxy: Proxy, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """Real clients send the next turn as soon as they read the stream's end; a slow disk must not make that turn
    start over (a replay costs the whole history again). The stream ends only once the turn is recorded."""
    store = proxy.app[SESSIONS].store
    save = store.save

    async def slow_save(conversation: Any) -> None:
        await asyncio.sleep(0.3)  # a slow disk (the fault), not a wait in the test
        await save(conversation)

    monkeypatch.setattr(store, "save", slow_save)
    upstream.push(Reply.text("Noted, Alice."), Reply.text("You are Alice."))
    history: list[Any] = [{"role": "user", "content": "My name is Alice"}]
    sessions = []
    for question in (None, "What is my name?"):
        if question is not None:
            history.append({"role": "user", "content": question})
        if protocol == "chat":
            chat_raw = await proxy.openai.chat.completions.with_raw_response.create(
                model="claude-sonnet-4", messages=history, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chat_raw.parse() if c.choices])
            headers = chat_raw.headers
        else:  # as Codex and OpenClaw do: the whole input each time, not stored
            responses_raw = await proxy.openai.responses.with_raw_response.create(
                model="claude-sonnet-4", input=history, stream=True, store=False
            )
            text = ""
            # Codex goes on at `response.completed`, without waiting for the EOF
            async for event in responses_raw.parse():
                if event.type == "response.output_text.delta":
                    text += event.delta
                if event.type == "response.completed":
                    break
            headers = responses_raw.headers
        sessions.append(headers["x-session-id"])
        history.append({"role": "assistant", "content": text})
    assert sessions[0] == sessions[1]  # the same conversation, not a new one
    [held] = holding(pool_of(proxy))
    await wait_for(lambda: pool_of(proxy).busy == 0)
    assert held.lines_written == 1  # only the new question went to the CLI


async def test_a_turn_being_recorded_at_shutdown_is_recorded(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops (its handlers cancelled) while a finished turn is being written: the store waits for it."""
    proxy = await start_proxy(shutdown_timeout=0.1)
    store = proxy.app[SESSIONS].store
    save, saving = store.save, asyncio.Event()

    async def slow_save(conversation: Any) -> None:
        saving.set()
        await asyncio.sleep(1.0)  # a slow disk (the fault)
        await save(conversation)

    monkeypatch.setattr(store, "save", slow_save)
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "remember me"}], "stream": True}
    async with proxy.http.post(f"{proxy.url}{CHAT}", json=body) as response:
        assert response.status == 200
        await saving.wait()
    await proxy.server.close()  # the handler is cancelled after 0.1 s; the record is still being written
    database = sqlite3.connect(proxy.settings.state_path / "sessions.sqlite3")
    try:
        assert database.execute("SELECT turns FROM conversations").fetchall() == [(1,)]
    finally:
        database.close()
