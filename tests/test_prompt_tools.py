"""OpenAI function calling → CLI turn: replayed calls and results, the results a waiting turn goes on with, and the
checks on tool messages (pure translation, no processes)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from maxproxy import errors, prompt, tools
from maxproxy.settings import Settings
from maxproxy.wire.chat import decode, to_turn

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def build(body: dict[str, Any], *, start: int = 0, **settings: Any) -> prompt.Turn:
    config = Settings(**settings)
    return prompt.build(to_turn(decode(msgspec.json.encode(body))), config, config.model_table, start=start)


def request(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4", "messages": list(messages), **extra}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def calls(*pairs: tuple[str, str], content: str | None = None) -> dict[str, Any]:
    """An assistant message calling get_weather once per (id, arguments)."""
    tool_calls = [
        {"id": id_, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        for id_, arguments in pairs
    ]
    return {"role": "assistant", "content": content, "tool_calls": tool_calls}


def result(call: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call, "content": content}


HISTORY = (
    user("Weather in Paris and Rome?"),
    calls(("call_1", '{"city": "Paris"}'), ("call.2", '{"city":"Rome"}'), content="Checking."),
    result("call_1", "sunny"),
    result("call.2", [{"type": "text", "text": "rainy"}, {"type": "text", "text": "cold"}]),
    user("Thanks"),
)


def test_replay_with_tools_gives_tool_use_and_tool_result_blocks() -> None:
    turn = build(request(*HISTORY, tools=[WEATHER]))
    assert [(line["type"], "shouldQuery" in line) for line in turn.lines] == [
        ("user", True),
        ("assistant", False),
        ("user", False),
    ]
    assert turn.lines[1]["message"]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": tools.block_id("call.2"), "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert turn.lines[2]["message"]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "rainy\ncold"},
        {"type": "text", "text": "Thanks"},
    ]
    assert turn.results is None
    assert [t.name for t in turn.toolset.tools] == ["get_weather"]


def test_without_tools_the_same_history_is_text() -> None:
    turn = build(request(*HISTORY))
    assistant = turn.lines[1]["message"]["content"]
    assert [b["type"] for b in assistant] == ["text", "text", "text"]
    assert assistant[1]["text"] == '[Called tool get_weather (id call_1) with arguments: {"city": "Paris"}]'
    last = turn.lines[2]["message"]["content"]
    assert [b["text"] for b in last] == [
        "[Result of tool call call_1]\nsunny",
        "[Result of tool call call.2]\nrainy\ncold",
        "Thanks",
    ]
    assert turn.toolset == tools.Toolset()


@pytest.mark.parametrize(
    ("arguments", "parsed"),
    [
        ('{"a": {"b": 1}}', {"a": {"b": 1}}),
        ("", {}),
        ("not json", {"arguments": "not json"}),
        ("[1, 2]", {"arguments": [1, 2]}),
    ],
)
def test_replayed_arguments_are_always_an_object(arguments: str, parsed: dict[str, Any]) -> None:
    turn = build(request(user("q"), calls(("c1", arguments)), result("c1", "r"), tools=[WEATHER]))
    assert turn.lines[1]["message"]["content"][0]["input"] == parsed


def test_an_empty_tool_result_is_replayed_as_no_output() -> None:
    turn = build(request(user("q"), calls(("c1", "{}")), result("c1", ""), tools=[WEATHER]))
    assert turn.lines[-1]["message"]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "(no output)"}
    ]


def test_a_history_ending_with_tool_messages_queries_with_the_results() -> None:
    turn = build(request(user("q"), calls(("c1", "{}")), result("c1", "42"), tools=[WEATHER]))
    last = turn.lines[-1]
    assert last["type"] == "user"
    assert "shouldQuery" not in last
    assert last["message"]["content"][0]["type"] == "tool_result"


def test_a_continuation_with_tool_messages_gives_results_and_no_lines() -> None:
    turn = build(
        request(
            user("q"),
            calls(("call1", "{}"), ("call2", "{}")),
            result("call1", "a"),
            result("call2", ""),
            tools=[WEATHER],
        ),
        start=2,
    )
    assert turn.results == {"call1": "a", "call2": ""}
    assert turn.lines == []


def test_a_continuation_with_results_and_a_user_message_gives_one_querying_line() -> None:
    turn = build(
        request(user("q"), calls(("call1", "{}")), result("call1", "a"), user("and now?"), tools=[WEATHER]), start=2
    )
    assert turn.results == {"call1": "a"}
    [line] = turn.lines
    assert line["type"] == "user"
    assert line["message"]["content"] == [{"type": "text", "text": "and now?"}]
    assert "shouldQuery" not in line
    assert line["client_composed"] is True


def test_a_continuation_with_a_user_message_only_has_no_results() -> None:
    turn = build(request(user("q"), {"role": "assistant", "content": "a"}, user("more"), tools=[WEATHER]), start=2)
    assert turn.results is None
    assert len(turn.lines) == 1


@pytest.mark.parametrize("with_tools", [True, False])
def test_a_call_without_its_tool_message_is_a_400(with_tools: bool) -> None:
    extra = {"tools": [WEATHER]} if with_tools else {}
    body = request(user("q"), calls(("c1", "{}"), ("c2", "{}")), result("c1", "a"), user("go on"), **extra)
    with pytest.raises(errors.InvalidRequest) as caught:
        build(body)
    assert caught.value.status == 400
    assert caught.value.param == "messages[1].tool_calls"
    assert "'c2'" in caught.value.message


@pytest.mark.parametrize("start", [0, 2])
def test_a_trailing_call_without_its_tool_message_is_a_400(start: int) -> None:
    body = request(user("q"), calls(("c1", "{}"), ("c2", "{}")), result("c1", "a"), tools=[WEATHER])
    with pytest.raises(errors.InvalidRequest) as caught:
        build(body, start=start)
    assert caught.value.param == "messages[1].tool_calls"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ((user("q"), calls(("c1", "{}")), result("nope", "a")), "messages[2].tool_call_id"),
        ((user("q"), result("c1", "a")), "messages[1].tool_call_id"),
        ((user("q"), calls(("c1", "{}")), result("c1", "a"), result("c1", "b")), "messages[3].tool_call_id"),
        ((user("q"), calls(("c1", "{}")), result("c1", "a"), user("x"), result("c1", "b")), "messages[4].tool_call_id"),
    ],
)
def test_a_tool_message_for_an_unknown_or_answered_call_is_a_400(
    messages: tuple[dict[str, Any], ...], param: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        build(request(*messages, tools=[WEATHER]))
    assert caught.value.status == 400
    assert caught.value.param == param


def test_a_bad_tool_definition_is_a_400_from_build() -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        build(request(user("q"), tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}))
    assert caught.value.param == "tool_choice"


@pytest.mark.parametrize("choice", ["required", "none", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_instructions_are_the_last_block_of_the_last_user_line(choice: Any) -> None:
    turn = build(request(*HISTORY, tools=[WEATHER], tool_choice=choice))
    note = turn.toolset.instructions()
    assert note is not None
    content = turn.lines[-1]["message"]["content"]
    assert content[-1] == {"type": "text", "text": note}
    assert content[0]["type"] == "tool_result"
    assert all(note not in str(line) for line in turn.lines[:-1])


def test_auto_choice_adds_no_instructions() -> None:
    turn = build(request(user("q"), tools=[WEATHER], tool_choice="auto"))
    assert turn.lines[-1]["message"]["content"] == [{"type": "text", "text": "q"}]


@pytest.mark.parametrize(
    ("settings", "with_tools", "expected"),
    [
        ({"cli_tools": "Read,Grep"}, True, ""),
        ({"cli_tools": "Read,Grep"}, False, None),
        ({"cli_tools": ""}, True, None),
        ({"cli_tools": "Read,Grep", "mix_cli_tools": True}, True, None),
    ],
)
def test_cli_tools_are_off_for_requests_with_tools_unless_mixed(
    settings: dict[str, Any], with_tools: bool, expected: str | None
) -> None:
    extra = {"tools": [WEATHER]} if with_tools else {}
    assert build(request(user("q"), **extra), **settings).launch.cli_tools == expected
