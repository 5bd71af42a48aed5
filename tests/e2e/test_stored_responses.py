"""Stored responses of the Responses API through the real CLI, read by the `openai` SDK: create, retrieve, list the
input items and delete; `previous_response_id` going on with the warm worker (also for a function call's output, on
the waiting CLI turn), after a restart, and never across keys; `store: false`, expiry, `item_reference`, and a
streamed response that is stored before its terminal event reaches the client."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import openai
import pytest
from maxproxy.bench.upstream import FakeUpstream, Reply, ToolUse
from maxproxy.state import SESSIONS
from openai import AsyncOpenAI

from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import holding, quiet
from tests.e2e.test_responses import MODEL, WEATHER
from tests.e2e.test_sessions import pool_of, texts
from tests.e2e.test_tools import calls, result_text, tool_results


async def settled(proxy: Proxy) -> None:
    await wait_for(lambda: quiet(pool_of(proxy)))


async def test_create_retrieve_list_delete(proxy: Proxy, upstream: FakeUpstream) -> None:
    created = await proxy.openai.responses.create(model=MODEL, input="Remember 42", instructions="Be brief.")
    retrieved = await proxy.openai.responses.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()  # the same object, as it was answered
    assert retrieved.output_text == "Hello from fake upstream!"

    listed = await proxy.openai.responses.input_items.list(created.id)
    [item] = listed.data
    assert item.type == "message"
    assert item.role == "user"
    assert [part.text for part in item.content if part.type == "input_text"] == ["Remember 42"]
    assert item.id.startswith("msg_")
    page = listed.model_extra or {}  # the SDK's page type has no `first_id`/`last_id`: they are its extra fields
    assert (page["first_id"], page["last_id"], listed.has_more) == (item.id, item.id, False)

    # The SDK declares `delete` as returning nothing; the test looks at what it does return.
    delete: Callable[[str], Awaitable[object]] = proxy.openai.responses.delete
    deleted = await delete(created.id)
    assert deleted is None  # the SDK returns nothing: the raw body is checked below
    for call in (proxy.openai.responses.retrieve(created.id), proxy.openai.responses.input_items.list(created.id)):
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        assert caught.value.body["param"] == "response_id"  # type: ignore[index]
    async with proxy.http.delete(f"{proxy.url}/v1/responses/{created.id}") as response:
        assert response.status == 404


async def test_delete_answers_openais_shape(proxy: Proxy) -> None:
    created = await proxy.openai.responses.create(model=MODEL, input="hi")
    async with proxy.http.delete(f"{proxy.url}/v1/responses/{created.id}") as response:
        assert response.status == 200
        assert await response.json() == {"id": created.id, "object": "response", "deleted": True}


async def test_input_items_pages(proxy: Proxy) -> None:
    sent: list[Any] = [
        {"role": "developer", "content": "Context."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "ok"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}], "id": "msg_client"},
    ]
    created = await proxy.openai.responses.create(model=MODEL, input=sent)
    newest = await proxy.openai.responses.input_items.list(created.id, limit=2)  # desc by default, as OpenAI
    assert newest.data[0].id == "msg_client"
    assert newest.has_more is True
    every = [item async for item in proxy.openai.responses.input_items.list(created.id, order="asc", limit=1)]
    assert [item.id for item in every][-1] == "msg_client"
    assert [getattr(item, "role", None) for item in every] == ["developer", "user", "assistant", "user"]
    after = await proxy.openai.responses.input_items.list(created.id, order="asc", after=every[1].id)
    assert [item.id for item in after.data] == [every[2].id, "msg_client"]
    for query, param in [("limit=0", "limit"), ("limit=x", "limit"), ("order=up", "order"), ("after=nope", "after")]:
        async with proxy.http.get(f"{proxy.url}/v1/responses/{created.id}/input_items?{query}") as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == param


async def test_previous_response_id_continues_on_the_warm_worker(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("Noted, Alice."), Reply.text("You are Alice."))
    first = await proxy.openai.responses.with_raw_response.create(model=MODEL, input="My name is Alice")
    answer = first.parse()
    await settled(proxy)
    [held] = holding(pool_of(proxy))
    second = await proxy.openai.responses.with_raw_response.create(
        model=MODEL, input="What is my name?", previous_response_id=answer.id
    )
    assert second.parse().output_text == "You are Alice."
    assert second.parse().previous_response_id == answer.id
    assert second.headers["x-session-id"] == first.headers["x-session-id"]  # one conversation
    assert held.lines_written == 1  # only the new message went to the same CLI session
    assert holding(pool_of(proxy)) == [held]
    assert texts(upstream.messages_requests[-1].messages) == [
        ("user", "My name is Alice"),
        ("assistant", "Noted, Alice."),
        ("user", "What is my name?"),
    ]  # the whole history, once
    # The continuation is stored with its whole input: a third turn goes on from the second.
    third = await proxy.openai.responses.create(model=MODEL, input="Again?", previous_response_id=second.parse().id)
    assert third.output_text
    assert [t for _, t in texts(upstream.messages_requests[-1].messages)] == [
        "My name is Alice",
        "Noted, Alice.",
        "What is my name?",
        "You are Alice.",
        "Again?",
    ]


async def test_a_function_call_output_by_previous_response_id(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Paris"})), Reply.text("Sunny, 22C."))
    first = await proxy.openai.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = await proxy.openai.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22C and sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "Sunny, 22C."
    # The waiting CLI turn went on: the result under the model's own tool_use id, nothing asked twice.
    assert len(upstream.messages_requests) == 2
    [result] = tool_results(upstream.messages_requests[1])
    assert result["tool_use_id"] == "toolu_fake_1_0"
    assert result_text(result).startswith("22C and sunny")


async def test_previous_response_id_after_a_restart(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.push(Reply.text("Remembered."), Reply.text("It was 7."))
    first = await start_proxy()
    answer = await first.openai.responses.create(model=MODEL, input="Remember 7")
    await settled(first)
    await first.server.close()  # maxproxy stops; its workers with it
    second = await start_proxy()  # the same state directory
    retrieved = await second.openai.responses.retrieve(answer.id)
    assert retrieved.output_text == "Remembered."
    again = await second.openai.responses.create(model=MODEL, input="What number?", previous_response_id=answer.id)
    assert again.output_text == "It was 7."
    assert texts(upstream.messages_requests[-1].messages) == [
        ("user", "Remember 7"),
        ("assistant", "Remembered."),
        ("user", "What number?"),
    ]  # the model sees the earlier turn (resumed from its CLI session)
    [worker] = holding(pool_of(second))
    assert worker.lines_written == 1


async def test_another_keys_response_does_not_exist(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(api_keys=["key-a", "key-b"])
    mine = await proxy.openai.responses.create(model=MODEL, input="secret")
    other = AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="key-b", max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError) as caught:
            await other.responses.create(model=MODEL, input="and?", previous_response_id=mine.id)
        error: Any = caught.value.body
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            "previous_response_id",
            "previous_response_not_found",
        )
        for call in (
            other.responses.retrieve(mine.id),
            other.responses.input_items.list(mine.id),
            other.responses.delete(mine.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
    finally:
        await other.close()
    assert (await proxy.openai.responses.retrieve(mine.id)).id == mine.id  # still there for its owner


async def test_store_false_is_not_kept(proxy: Proxy) -> None:
    answer = await proxy.openai.responses.create(model=MODEL, input="hi", store=False)
    assert (answer.model_extra or {})["store"] is False  # `store` is not in the SDK's `Response` type
    with pytest.raises(openai.NotFoundError):
        await proxy.openai.responses.retrieve(answer.id)
    with pytest.raises(openai.NotFoundError):
        await proxy.openai.responses.create(model=MODEL, input="more", previous_response_id=answer.id)


async def test_an_expired_response_is_gone_before_and_after_the_sweep(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(session_ttl_days=1)
    old = await proxy.openai.responses.create(model=MODEL, input="short-lived")
    kept = await proxy.openai.responses.create(model=MODEL, input="fresh")
    sessions = proxy.app[SESSIONS]
    row = await sessions.responses.get("local", old.id, since=0)
    assert row is not None
    # Stored a day and a second ago (rather than a tiny TTL and a sleep that must outlast it).
    await sessions.responses.save(msgspec.structs.replace(row, created=time.time() - 86401), [])
    with pytest.raises(openai.NotFoundError):
        await proxy.openai.responses.retrieve(old.id)
    with pytest.raises(openai.NotFoundError):
        await proxy.openai.responses.create(model=MODEL, input="and?", previous_response_id=old.id)
    await sessions.sweep()
    assert await sessions.responses.get("local", old.id, since=0) is None  # deleted by the sweep
    assert (await proxy.openai.responses.retrieve(kept.id)).id == kept.id


async def test_a_streamed_response_is_stored_before_its_terminal_event(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("one two three", pieces=3)
    stream = await proxy.openai.responses.create(model=MODEL, input="count", stream=True)
    async for event in stream:
        if event.type == "response.completed":
            # Retrieved while the stream is still open: the row was written before this event.
            retrieved = await proxy.openai.responses.retrieve(event.response.id)
            assert retrieved.output_text == "one two three"
            assert retrieved.status == "completed"
            break
    else:
        pytest.fail("no response.completed")
    await stream.close()


async def test_a_stream_the_client_left_is_not_stored(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("slow " * 100, pieces=100, delay=0.05)
    body = {"model": MODEL, "input": "a long story", "stream": True}
    async with proxy.http.post(f"{proxy.url}/v1/responses", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: ") and b'"response.output_text.delta"' in line:
                break
            if line.startswith(b"data: ") and b'"response.created"' in line:
                response_id = json.loads(line[6:])["response"]["id"]
        response.close()  # the client leaves mid-answer
    await settled(proxy)  # the turn was stopped
    with pytest.raises(openai.NotFoundError):
        await proxy.openai.responses.retrieve(response_id)


async def test_item_reference_resolves_a_stored_item(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("Noted: blue."), Reply.text("Blue."))
    first = await proxy.openai.responses.create(model=MODEL, input="My colour is blue")
    [asked] = (await proxy.openai.responses.input_items.list(first.id)).data
    [said] = first.output
    said_id = cast(str, said.id)  # an output message, whose id the SDK's item union types as optional
    second = await proxy.openai.responses.create(
        model=MODEL,
        input=[
            {"type": "item_reference", "id": asked.id},
            {"type": "item_reference", "id": said_id},
            {"role": "user", "content": "My colour?"},
        ],
    )
    assert second.output_text == "Blue."
    assert texts(upstream.messages_requests[-1].messages) == [
        ("user", "My colour is blue"),
        ("assistant", "Noted: blue."),
        ("user", "My colour?"),
    ]
    async with proxy.http.post(
        f"{proxy.url}/v1/responses",
        json={"model": MODEL, "input": [{"role": "user", "content": "x"}, {"type": "item_reference", "id": "msg_no"}]},
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["param"] == "input[1].id"


async def test_a_fault_in_the_new_input_names_the_clients_own_index(proxy: Proxy, upstream: FakeUpstream) -> None:
    first = await proxy.openai.responses.create(model=MODEL, input="hi")
    body = {
        "model": MODEL,
        "previous_response_id": first.id,
        "input": [{"role": "user", "content": "ok"}, {"type": "function_call_output", "call_id": "c9", "output": "x"}],
    }
    async with proxy.http.post(f"{proxy.url}/v1/responses", json=body) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "input[1].call_id"
    assert len(upstream.messages_requests) == 1
