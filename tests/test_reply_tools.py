"""CLI events → an answer that stops at the client's tool calls, fed with hand-made event sequences."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from maxproxy import errors, reply, tools
from maxproxy.claude.events import ToolCall, TurnEvent, decode
from maxproxy.turns.core import ToolCallEvent, outcome
from maxproxy.turns.messages import AssistantMessage, FunctionCall
from maxproxy.turns.messages import ToolCall as WireToolCall
from maxproxy.wire import chat


def line(obj: dict[str, Any]) -> TurnEvent:
    decoded = decode(json.dumps(obj).encode())
    assert decoded is not None
    return decoded


def sse(event: dict[str, Any], message: str) -> TurnEvent:
    return line({"type": "stream_event", "event": event, "api_message_id": message, "parent_tool_use_id": None})


def start(message: str, input_tokens: int = 3) -> TurnEvent:
    return sse({"type": "message_start", "message": {"id": message, "usage": {"input_tokens": input_tokens}}}, message)


def text(message: str, value: str) -> TurnEvent:
    return sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": value}}, message)


def tool_use(message: str, tool_use_id: str, index: int = 1) -> TurnEvent:
    block = {"type": "tool_use", "id": tool_use_id, "name": "get_weather", "input": {}}
    return sse({"type": "content_block_start", "index": index, "content_block": block}, message)


def stop(message: str, reason: str = "tool_use", output_tokens: int = 5) -> TurnEvent:
    delta = {"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": output_tokens}}
    return sse(delta, message)


def accepted(tool_use_id: str, arguments: str = '{"city":"Paris"}') -> ToolCall:
    return ToolCall(tool_use_id, tools.call_id(tool_use_id), "get_weather", arguments)


def refused(tool_use_id: str) -> ToolCall:
    return ToolCall(tool_use_id, tools.call_id(tool_use_id), "get_weather", "{}", refusal="Invalid arguments")


def answered(tool_use_id: str, parent: str | None = None) -> TurnEvent:
    """The CLI ran the tool itself (a built-in one, or one it does not know) and reports its result."""
    content = [{"type": "tool_result", "tool_use_id": tool_use_id, "content": "done"}]
    return line({"type": "user", "message": {"role": "user", "content": content}, "parent_tool_use_id": parent})


def result(**fields: Any) -> TurnEvent:
    return line({"type": "result", "subtype": "success", "is_error": False, **fields})


def fed(*events: TurnEvent, **options: Any) -> reply.Assembler:
    assembler = reply.Assembler(**options)
    for event in events:
        assembler.feed(event)
    return assembler


def test_suspended_only_once_the_message_ended_at_tool_use() -> None:
    assembler = fed(start("m1"), text("m1", "Checking."), tool_use("m1", "tu1"), accepted("tu1"))
    before = assembler.suspended
    assembler.feed(stop("m1"))
    assert (before, assembler.suspended) == (False, True)
    assert assembler.failure() is None  # no result came, and none will until the client answers


def test_suspended_only_once_every_call_of_the_message_is_settled() -> None:
    assembler = fed(start("m1"), tool_use("m1", "tu1", 0), tool_use("m1", "tu2", 1), tool_use("m1", "tu3", 2))
    assembler.feed(stop("m1"))
    steps: list[tuple[TurnEvent, bool]] = [(accepted("tu1"), False), (refused("tu2"), False), (answered("tu3"), True)]
    for event, suspended in steps:
        assembler.feed(event)
        assert assembler.suspended is suspended


def test_a_subagents_tool_result_settles_nothing() -> None:
    assembler = fed(start("m1"), tool_use("m1", "tu1", 0), tool_use("m1", "tu2", 1), stop("m1"), accepted("tu1"))
    assembler.feed(answered("tu2", parent="toolu_task"))
    assert not assembler.suspended


def test_not_suspended_when_every_call_was_refused_or_answered_inside() -> None:
    assembler = fed(start("m1"), tool_use("m1", "tu1", 0), tool_use("m1", "tu2", 1), stop("m1"))
    assembler.feed(refused("tu1"))
    assembler.feed(answered("tu2"))
    assert not assembler.suspended
    assert assembler.calls == []
    assert isinstance(assembler.failure(), errors.CLIFailed)  # the turn goes on; without a result it failed


def test_not_suspended_when_the_message_ended_for_another_reason() -> None:
    assert not fed(start("m1"), tool_use("m1", "tu1"), accepted("tu1"), stop("m1", "end_turn")).suspended
    assert not fed(start("m1"), tool_use("m1", "tu1"), accepted("tu1"), stop("m1", "max_tokens")).suspended


def test_a_message_that_never_streamed_suspends_from_its_stop_reason() -> None:
    message = {
        "id": "m1",
        "model": "claude-sonnet-4",
        "content": [{"type": "tool_use", "id": "tu1", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use",
    }
    assembler = fed(line({"type": "assistant", "message": message, "parent_tool_use_id": None}))
    before = assembler.suspended
    assembler.feed(accepted("tu1"))
    assert (before, assembler.suspended) == (False, True)


def test_a_call_of_the_next_message_does_not_suspend_before_that_message_ends() -> None:
    # m1's call was refused (the model is told to try again); m2 retries, and the CLI dispatches its first call
    # while m2 still streams (its streaming tool executor starts read-only tools at once).
    assembler = fed(start("m1"), tool_use("m1", "tu1"), stop("m1"), refused("tu1"))
    assembler.feed(start("m2"))
    assembler.feed(tool_use("m2", "tu2", 0))
    assembler.feed(accepted("tu2"))
    assembler.feed(tool_use("m2", "tu3", 1))
    early = assembler.suspended
    assembler.feed(stop("m2"))
    assembler.feed(accepted("tu3"))
    assert (early, assembler.suspended) == (False, True)
    assert [c.tool_use_id for c in assembler.calls] == ["tu2", "tu3"]


def test_message_has_no_content_without_text_and_the_accepted_calls_in_order() -> None:
    assembler = fed(
        start("m1"),
        tool_use("m1", "toolu_b", 0),
        tool_use("m1", "toolu_x", 1),
        tool_use("m1", "toolu_a", 2),
        stop("m1"),
        accepted("toolu_b", '{"city":"Rome"}'),
        refused("toolu_x"),
        accepted("toolu_a"),
    )
    assert assembler.message() == AssistantMessage(
        content=None,
        tool_calls=[
            WireToolCall(id="callb", function=FunctionCall(name="get_weather", arguments='{"city":"Rome"}')),
            WireToolCall(id="calla", function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}')),
        ],
    )


def test_message_keeps_the_text_before_the_calls() -> None:
    assembler = fed(start("m1"), text("m1", "Checking."), tool_use("m1", "tu1"), stop("m1"), accepted("tu1"))
    message = assembler.message()
    assert message.content == "Checking."
    assert [c.id for c in message.tool_calls or []] == ["calltu1"]


def test_a_plain_answer_has_no_tool_calls() -> None:
    assert fed(start("m1"), text("m1", "Hi"), stop("m1", "end_turn")).message() == AssistantMessage(content="Hi")


@pytest.mark.parametrize(("continuation", "expected"), [(True, (3, 5)), (False, (100, 200))])
def test_a_continuation_counts_its_own_model_calls_not_the_whole_turn(
    continuation: bool, expected: tuple[int, int]
) -> None:
    assembler = fed(
        start("m2", input_tokens=3),
        text("m2", "It is sunny."),
        stop("m2", "end_turn", output_tokens=5),
        result(usage={"input_tokens": 100, "output_tokens": 200}),
        continuation=continuation,
    )
    usage = assembler.usage()
    assert (usage.prompt_tokens, usage.completion_tokens) == expected


def test_the_completion_carries_the_calls_and_no_content() -> None:
    assembler = fed(start("m1"), tool_use("m1", "tu1"), stop("m1"), accepted("tu1"))
    assert assembler.finish_reason == "tool_calls"
    body = json.loads(chat.completion("chatcmpl-1", 1, "claude-sonnet-4", outcome(assembler)))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "calltu1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]


def test_a_completion_without_calls_has_no_tool_calls_key() -> None:
    body = json.loads(chat.completion("chatcmpl-1", 1, "m", outcome(fed(start("m1"), text("m1", "Hi")))))
    assert "tool_calls" not in body["choices"][0]["message"]


def test_a_tool_call_is_two_chunks_name_first_then_arguments() -> None:
    chunks = chat.Chunks("chatcmpl-1", 1700000000, "claude-sonnet-4")
    call = ToolCall("toolu_1", "call1", "get_weather", '{"city":"Paris \\"Ville\\""}')
    first, second = (
        json.loads(payload) for payload in chunks.tool_call(ToolCallEvent(2, call.id, call.name, call.arguments))
    )
    for chunk in (first, second):
        assert (chunk["id"], chunk["object"], chunk["model"]) == (
            "chatcmpl-1",
            "chat.completion.chunk",
            "claude-sonnet-4",
        )
        assert (chunk["choices"][0]["index"], chunk["choices"][0]["finish_reason"]) == (0, None)
    assert first["choices"][0]["delta"] == {
        "tool_calls": [
            {"index": 2, "id": "call1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ]
    }
    assert second["choices"][0]["delta"] == {"tool_calls": [{"index": 2, "function": {"arguments": call.arguments}}]}
    assert msgspec.json.decode(second["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]) == {
        "city": 'Paris "Ville"'
    }
