"""Conversation identity for messages with tool calls: an answer the client parses and re-serialises is still the
same answer."""

from __future__ import annotations

import msgspec
from maxproxy import conversation
from maxproxy.api.schema import AssistantMessage, FunctionCall, Message, ToolCall, ToolMessage


def assistant(*arguments: str, content: str | None = None) -> AssistantMessage:
    calls = [ToolCall(id=f"call{i}", function=FunctionCall(name="f", arguments=a)) for i, a in enumerate(arguments)]
    return AssistantMessage(content=content, tool_calls=calls)


def test_arguments_with_other_spacing_and_key_order_canonicalise_identically() -> None:
    assert conversation.canonical(assistant('{"b": 1, "a": 2}')) == conversation.canonical(assistant('{"a":2,"b":1}'))
    nested = conversation.canonical(assistant('{"x": {"d": [1, {"z": 0, "y": 1}], "c": null}}'))
    assert nested == conversation.canonical(assistant('{"x":{"c":null,"d":[1,{"y":1,"z":0}]}}'))


def test_different_arguments_stay_different() -> None:
    assert conversation.canonical(assistant('{"a": 1}')) != conversation.canonical(assistant('{"a": 2}'))
    assert conversation.canonical(assistant('{"a": 1}')) != conversation.canonical(assistant('{"a": 1}', "{}"))


def test_invalid_json_arguments_are_kept_as_they_are() -> None:
    canonical = msgspec.json.decode(conversation.canonical(assistant('{"a": 1,')))
    assert canonical == ["assistant", [], [["call0", "f", '{"a": 1,']]]
    assert conversation.canonical(assistant('{"a": 1,')) != conversation.canonical(assistant('{"a":1,'))


def test_no_content_and_empty_content_are_the_same_answer() -> None:
    assert conversation.canonical(assistant("{}")) == conversation.canonical(assistant("{}", content=""))


def test_the_recorded_answer_and_the_clients_echo_give_the_same_head() -> None:
    ours: list[Message] = [assistant('{"city":"Paris","days":2}')]
    echoed = msgspec.convert(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call0",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"days": 2, "city": "Paris"}'},
                }
            ],
        },
        AssistantMessage,
    )
    tool = ToolMessage(content="sunny", tool_call_id="call0")
    assert conversation.split([*ours, tool]).head == conversation.split([echoed, tool]).head
