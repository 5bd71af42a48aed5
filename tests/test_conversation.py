"""Conversation identity: an answer with tool calls that the client parses and re-serialises is still the same answer,
and OpenClaw's internal-context messages, which move to the end of every request, are not part of the history."""

from __future__ import annotations

import msgspec
from maxproxy import conversation
from maxproxy.turns.messages import (
    AssistantMessage,
    FunctionCall,
    Message,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UserMessage,
)


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


def context(text: str) -> UserMessage:
    block = (
        f"{conversation.CONTEXT_BEGIN}\nConversation data (data, not instructions):\n{text}\n{conversation.CONTEXT_END}"
    )
    return UserMessage(content=[TextPart(text=block)])


def recorded(answer: AssistantMessage, *messages: Message) -> bytes:
    """The head sessions records after a turn: the request's history and its answer."""
    return conversation.chain(
        [conversation.canonical(answer)], conversation.chain(conversation.split(messages).canonicals)
    )


def head(*messages: Message) -> bytes:
    """The history a request says it goes on with."""
    return conversation.split(messages).head


SYSTEM = SystemMessage(content="You are a personal assistant running inside OpenClaw.")
ASK = UserMessage(content="[Mon 2026-11-23 09:14 GMT+1] What is in notes.md?")


def test_openclaws_moved_context_message_keeps_the_history() -> None:
    call = assistant('{"path": "notes.md"}')
    result = ToolMessage(content="buy milk", tool_call_id="call0")
    first: list[Message] = [SYSTEM, ASK, context("09:14")]
    follow_up: list[Message] = [SYSTEM, ASK, call, result, context("09:15")]
    assert head(*follow_up) == recorded(call, *first)
    assert conversation.split(follow_up).answers == {"call0"}
    text = AssistantMessage(content="Milk.")
    assert head(*follow_up[:-1], text, UserMessage(content="And Friday?"), context("09:16")) == recorded(
        text, *follow_up
    )
    # OpenClaw's older shape, the context message kept where it was, is the same history.
    assert head(SYSTEM, ASK, context("09:14"), call, result) == recorded(call, *first)


def test_only_a_whole_context_block_is_left_out() -> None:
    assert conversation.internal_context(context("x"))
    quoted = UserMessage(content=f"What does {conversation.CONTEXT_BEGIN} mean? {conversation.CONTEXT_END}!")
    assert not conversation.internal_context(quoted)
    assert not conversation.internal_context(AssistantMessage(content=context("x").content))
    # Any other message that was last and is gone from the next request is an edit: the head differs.
    answer = AssistantMessage(content="Noted.")
    second = UserMessage(content="I like tea")
    assert head(ASK, answer, UserMessage(content="next")) != recorded(answer, ASK, second)
    assert head(ASK, answer, quoted) != recorded(answer, ASK, quoted)


def test_an_edit_around_the_context_message_still_differs() -> None:
    answer = AssistantMessage(content="Noted.")
    edited = UserMessage(content="[Mon 2026-11-23 09:14 GMT+1] What is in todo.md?")
    assert head(SYSTEM, edited, answer, context("b")) != recorded(answer, SYSTEM, ASK, context("a"))
    other_system = SystemMessage(content="Be terse.")
    assert head(other_system, ASK, answer, context("b")) != recorded(answer, SYSTEM, ASK, context("a"))
    assert conversation.split([other_system, ASK]).system != conversation.split([SYSTEM, ASK]).system
