"""Structured outputs through the real CLI, read by the `openai` SDK's own parsers: chat `response_format` (a
Pydantic model, `json_object`) and Responses `text.format`, streamed and not. The model is told the schema in the
turn's prompt; its answer is held back, unfenced and checked; an invalid one is asked for again on the same worker
(the fake upstream sees the correction), and one still invalid is a 502, never the invalid text. The conversation
goes on from the JSON the client got."""

from __future__ import annotations

import json
from typing import Any, cast

import openai
import pytest
from maxproxy.bench.upstream import FakeUpstream, Reply, Thinking, ToolUse
from openai.types.chat import ChatCompletionMessageFunctionToolCallParam as ToolCallParam
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params.response_format_json_schema import JSONSchema
from pydantic import BaseModel

from tests.conftest import Proxy, ProxyFactory

MODEL = "claude-sonnet-4"
ADA = '{"name": "Ada", "age": 36}'


class Person(BaseModel):
    name: str
    age: int


def last_user_text(upstream: FakeUpstream, n: int = -1) -> str:
    """The text of the last user message of the `n`th model call."""
    message = [m for m in upstream.messages_requests[n].messages if m["role"] == "user"][-1]
    return "\n".join(b.get("text", "") for b in message["content"] if b.get("type") == "text")


async def test_chat_parse_gives_the_model(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text(ADA))
    completion = await proxy.openai.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Who wrote the first program?"}], response_format=Person
    )
    message = completion.choices[0].message
    assert message.parsed == Person(name="Ada", age=36)
    assert completion.choices[0].finish_reason == "stop"
    note = last_user_text(upstream)
    assert "<response_format>" in note
    assert "`Person`" in note
    assert '"age"' in note


async def test_chat_stream_holds_the_text_and_unfences_it(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply(blocks=(Thinking("who?"), *Reply.text(f"```json\n{ADA}\n```", pieces=6).blocks)))
    async with proxy.openai.chat.completions.stream(
        model=MODEL, messages=[{"role": "user", "content": "Ada?"}], response_format=Person, reasoning_effort="high"
    ) as stream:
        contents = []
        async for event in stream:
            if event.type == "content.delta" and event.delta:  # (the role chunk opens with an empty one)
                contents.append(event.delta)
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == Person(name="Ada", age=36)
    assert contents == [ADA]  # held back, then the checked JSON in one delta: never the fence
    assert (final.choices[0].message.model_extra or {}).get("reasoning_content") == "who?"  # thinking still streams


async def test_json_object(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text('{"ok": true}'))
    response = await proxy.openai.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "JSON please"}], response_format={"type": "json_object"}
    )
    completion = response.parse()
    assert json.loads(completion.choices[0].message.content or "") == {"ok": True}
    assert "x-maxproxy-ignored-params" not in response.headers
    assert "one JSON object" in last_user_text(upstream)


async def test_an_invalid_answer_is_asked_for_again(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text('{"name": "Ada"}'), Reply.text(ADA))
    completion = await proxy.openai.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Ada?"}], response_format=Person
    )
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    _first, second = upstream.messages_requests
    correction = last_user_text(upstream)
    assert "does not match the required response format" in correction
    assert "'age' is a required property" in correction
    assert second.messages[-2]["role"] == "assistant"  # the same CLI session: the invalid answer, then the correction
    assert completion.usage is not None
    assert completion.usage.prompt_tokens >= 20  # both model calls count
    assert completion.usage.completion_tokens == 2


async def test_still_invalid_is_an_error(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("Ada Lovelace, 36"), Reply.text('{"name": "Ada", "age": "36"}'))
    with pytest.raises(openai.InternalServerError) as caught:
        await proxy.openai.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Ada?"}], response_format=Person
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "invalid_structured_output"
    assert "'36' is not of type 'integer'" in caught.value.message
    assert len(upstream.messages_requests) == 2  # one retry (`structured_output_retries` = 1)


async def test_no_retries_and_a_stream(cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(structured_output_retries=0)
    upstream.push(Reply.text("not JSON"))
    with pytest.raises(openai.InternalServerError) as caught:
        async with proxy.openai.chat.completions.stream(
            model=MODEL, messages=[{"role": "user", "content": "Ada?"}], response_format=Person
        ) as stream:
            await stream.get_final_completion()
    assert caught.value.code == "invalid_structured_output"
    assert len(upstream.messages_requests) == 1


async def test_the_output_limit_is_not_retried(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text('{"name": "Ad', stop_reason="max_tokens"))
    with pytest.raises(openai.LengthFinishReasonError):  # the SDK's own answer to an answer cut short
        await proxy.openai.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Ada?"}], response_format=Person, max_tokens=5
        )
    # The CLI may auto-continue past the limit before its interrupt lands (a second upstream call), but no
    # correction is ever sent.
    for sent in upstream.messages_requests:
        assert not any("does not match the required response format" in text for text in sent.texts())


async def test_responses_parse_and_stream(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text(ADA), Reply.text(f"```\n{ADA}\n```", pieces=4))
    response = await proxy.openai.responses.parse(model=MODEL, input="Ada?", text_format=Person)
    assert response.output_parsed == Person(name="Ada", age=36)
    assert "`Person`" in last_user_text(upstream)
    async with proxy.openai.responses.stream(model=MODEL, input="Ada?", text_format=Person) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.output_parsed == Person(name="Ada", age=36)
    assert deltas == [ADA]


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": {"type": "nope"}}}, "json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": [1]}}, "json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "P P", "schema": {}}}, "json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": {}, "strict": "yes"}}, "json_schema.strict"),
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "yaml"}, "type"),
    ],
)
async def test_chat_bad_formats(proxy: Proxy, response_format: Any, param: str) -> None:
    # `Any`: each format is malformed on purpose, so none fits the SDK's `response_format` type.
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.openai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            response_format=response_format,
        )
    assert caught.value.param == f"response_format.{param}"


async def test_responses_bad_schema(proxy: Proxy) -> None:
    # `Any`: an invalid schema on purpose (`minimum` must be a number).
    bad: Any = {"type": "json_schema", "name": "P", "schema": {"properties": {"a": {"minimum": "zero"}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        await proxy.openai.responses.create(model=MODEL, input="x", text={"format": bad})
    assert caught.value.param == "text.format.schema"
    assert "not a valid JSON Schema" in caught.value.message


async def test_the_conversation_goes_on_from_the_json(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("Sure! Ada."), Reply.text(f"```json\n{ADA}\n```"), Reply.text("She was 36."))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Ada?"}]
    first = await proxy.openai.chat.completions.with_raw_response.create(
        model=MODEL, messages=history, response_format={"type": "json_schema", "json_schema": SCHEMA}
    )
    answer = first.parse().choices[0].message.content
    assert answer == ADA
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "How old, in words?"}]
    second = await proxy.openai.chat.completions.with_raw_response.create(model=MODEL, messages=history)
    assert second.parse().choices[0].message.content == "She was 36."
    # The recorded answer is the JSON the client got, so its history continues the conversation on its worker.
    assert second.headers["x-session-id"] == first.headers["x-session-id"]
    third = upstream.messages_requests[-1]
    assert "<response_format>" not in last_user_text(upstream)  # a plain turn now
    # The question, the invalid answer, the correction, the fenced answer, the new question (the CLI adds a system one).
    assert [m["role"] for m in third.messages if m["role"] != "system"] == ["user", "assistant"] * 2 + ["user"]


async def test_tool_calls_go_to_the_client(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply(blocks=(ToolUse("lookup", {"who": "Ada"}),), stop_reason="tool_use"), Reply.text(ADA))
    tools: list[openai.types.chat.ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "strict": True,  # the SDK's `parse` takes strict tools only
                "parameters": {
                    "type": "object",
                    "properties": {"who": {"type": "string"}},
                    "required": ["who"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Ada?"}]
    first = await proxy.openai.chat.completions.parse(
        model=MODEL,
        messages=messages,
        tools=tools,
        response_format=Person,
    )
    [call] = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls"
    messages += [
        {"role": "assistant", "tool_calls": [cast(ToolCallParam, call.model_dump(include={"id", "type", "function"}))]},
        {"role": "tool", "tool_call_id": call.id, "content": "Ada Lovelace, born 1815, died at 36"},
    ]
    second = await proxy.openai.chat.completions.parse(
        model=MODEL,
        messages=messages,
        tools=tools,
        response_format=Person,
    )
    assert second.choices[0].message.parsed == Person(name="Ada", age=36)


SCHEMA: JSONSchema = {"name": "Person", "schema": Person.model_json_schema(), "strict": True}


async def test_a_stream_kept_alive_then_failed(
    cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(keepalive_interval=0.1, structured_output_retries=0)
    upstream.push(Reply.text("no JSON here at all", pieces=5, delay=0.1))
    async with proxy.openai.responses.stream(model=MODEL, input="Ada?", text_format=Person) as stream:
        events = [event async for event in stream]
    # The held answer opened the stream (a keepalive) before it was checked: the failure comes inside it.
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.error is not None
    assert "invalid_structured_output" in failed.response.error.message
    assert failed.response.output == []  # never the invalid text
