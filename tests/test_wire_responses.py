"""The Responses API wire module: what Codex, the Agents SDK and OpenClaw send (shapes written from the recordings
in issue 13) translated into chat's terms, every bad input a 400 naming its Responses param, and the output side's
events and final object checked with the openai SDK's own pydantic types and its stream accumulator."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from maxproxy import errors
from maxproxy.turns import structured
from maxproxy.turns.messages import (
    AssistantMessage,
    DeveloperMessage,
    ImagePart,
    OutputSchema,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from maxproxy.wire import responses as wire
from maxproxy.wire.responses import ResponseStream, decode_request, issued_id, sse, to_chat
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

EVENT = TypeAdapter(ResponseStreamEvent)


def body(**fields: Any) -> bytes:
    return msgspec.json.encode({"model": "claude-sonnet-4", **fields})


def translate(**fields: Any) -> wire.Translated:
    return to_chat(decode_request(body(**fields)))


def fn(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "description": f"the {name} tool",
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        "strict": False,
        **extra,
    }


# --- what real clients send --------------------------------------------------------------------------------------

CODEX_FUNCTIONS = ["exec_command", "write_stdin", "request_user_input", "view_image", "get_goal", "create_goal"]


def codex_request() -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4",
        "stream": True,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"summary": "auto"},
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "prompt_cache_key": "0199-session",
        "client_metadata": {"originator": "codex_cli_rs"},
        "tools": [
            *(fn(name) for name in [*CODEX_FUNCTIONS, "update_goal"]),
            {
                "type": "namespace",
                "name": "mcp__docs__",
                "description": "MCP server docs",
                "tools": [fn(f"docs_{i}") for i in range(5)],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "input": [
            {"type": "message", "id": "m0", "role": "developer", "content": [{"type": "input_text", "text": "P1"}]},
            {"type": "message", "id": "m1", "role": "developer", "content": [{"type": "input_text", "text": "P2"}]},
            {"type": "message", "id": "m2", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": None, "encrypted_content": "gAAAA"},
            {"type": "message", "id": "m3", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call01abc",
                "name": "exec_command",
                "arguments": '{"cmd":"ls"}',
            },
            {"type": "function_call", "id": "fc_2", "call_id": "call02def", "name": "docs_1", "arguments": "{}"},
            {"type": "function_call_output", "id": "fo_1", "call_id": "call01abc", "output": "a.txt"},
            {
                "type": "function_call_output",
                "id": "fo_2",
                "call_id": "call02def",
                "output": [{"type": "input_text", "text": "doc"}],
            },
        ],
    }


def test_codex_request() -> None:
    t = to_chat(decode_request(msgspec.json.encode(codex_request())))
    kinds = [type(m) for m in t.messages]
    assert kinds == [DeveloperMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage, ToolMessage]
    assistant = t.messages[3]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.content == [TextPart(text="ok")]  # the calls join the assistant text they follow
    assert [c.id for c in assistant.tool_calls or []] == ["call01abc", "call02def"]
    assert [c.function.name for c in assistant.tool_calls or []] == ["exec_command", "docs_1"]
    assert [m.tool_call_id for m in t.messages if isinstance(m, ToolMessage)] == ["call01abc", "call02def"]
    assert t.tools is not None
    assert len(t.tools) == 12
    assert t.tools[0] == {
        "type": "function",
        "function": {
            "name": "exec_command",
            "description": "the exec_command tool",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
            "strict": False,
        },
    }
    assert t.namespaces == {f"docs_{i}": "mcp__docs__" for i in range(5)}
    assert t.tool_sources[7:] == [f"tools[7].tools[{i}]" for i in range(5)]
    assert "tools.web_search" in t.ignored
    assert "include" in t.ignored
    assert t.store is False
    assert t.summary is True
    assert t.prompt_cache_key == "0199-session"
    assert t.tool_choice == "auto"
    assert t.parallel_tool_calls is True
    assert t.max_output_tokens is None
    assert t.rewritten_ids == {}


def test_namespace_with_functions_key() -> None:
    t = translate(input="hi", tools=[{"type": "namespace", "name": "ns", "functions": [fn("a"), fn("b")]}])
    assert [tool["function"]["name"] for tool in t.tools or []] == ["a", "b"]
    assert t.tool_sources == ["tools[0].functions[0]", "tools[0].functions[1]"]


def test_agents_sdk_request() -> None:
    t = translate(
        instructions="You are a helpful agent.",
        tools=[fn("get_weather", strict=True)],
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call7xyz",
                "name": "get_weather",
                "arguments": '{"x":"Paris"}',
                "id": "fc_9",
                "status": "completed",
                "async_": None,
                "caller": None,
                "namespace": None,
            },
            {"type": "function_call_output", "call_id": "call7xyz", "output": "sunny"},
        ],
    )
    assert isinstance(t.messages[0], SystemMessage)
    assert t.messages[0].content == "You are a helpful agent."
    assert isinstance(t.messages[1], UserMessage)
    call = t.messages[2]
    assert isinstance(call, AssistantMessage)
    assert call.content is None
    assert call.tool_calls is not None
    assert call.tool_calls[0].function.arguments == '{"x":"Paris"}'
    assert t.messages[3] == ToolMessage(content="sunny", tool_call_id="call7xyz")
    assert t.tools is not None
    assert t.tools[0]["function"]["strict"] is True
    assert t.store is True
    assert t.echo["instructions"] == "You are a helpful agent."


OPENCLAW_TOOLS = ["apply_patch", "edit", "exec", "ls", "process", "read", "sessions_yield", "tool_call"]
OPENCLAW_TOOLS += ["tool_describe", "tool_search", "view_image", "write"]
REWRITTEN = "call_call000007_fc_call000007_028de33e26"


def openclaw_input() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are OpenClaw."},
        {"role": "user", "content": "run ls"},
        {"type": "function_call", "call_id": REWRITTEN, "name": "exec", "arguments": '{"x":"ls"}'},
        {"type": "function_call_output", "call_id": REWRITTEN, "output": "a.txt"},
        {"role": "user", "content": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"},
    ]


def test_openclaw_request_restores_rewritten_ids() -> None:
    fields = {"stream": True, "store": False, "max_output_tokens": 8192, "tools": [fn(n) for n in OPENCLAW_TOOLS]}
    t = translate(input=openclaw_input(), **fields)
    assert isinstance(t.messages[0], SystemMessage)
    assert t.max_output_tokens == 8192
    assert len(t.tools or []) == 12
    assert t.rewritten_ids == {REWRITTEN: "call000007"}
    call, result = t.messages[2], t.messages[3]
    assert isinstance(call, AssistantMessage)
    assert call.tool_calls
    assert call.tool_calls[0].id == "call000007"
    assert isinstance(result, ToolMessage)
    assert result.tool_call_id == "call000007"
    # As sent, when the caller wants the client's own ids.
    kept = to_chat(decode_request(body(input=openclaw_input(), **fields)), restore_ids=False)
    assert isinstance(kept.messages[3], ToolMessage)
    assert kept.messages[3].tool_call_id == REWRITTEN


def test_issued_id_rule() -> None:
    assert issued_id("call000007") == "call000007"
    assert issued_id(REWRITTEN) == "call000007"
    assert issued_id(REWRITTEN, pending={"call000009"}) is None
    assert issued_id("fc_callAB12_x", pending={"callAB12"}) == "callAB12"
    assert issued_id("call_abc") is None  # "call" alone is no id maxproxy issued
    assert issued_id("toolu_01XYZ") is None


def test_two_rewrites_of_one_id_stay_as_sent() -> None:
    t = translate(
        tools=[fn("exec")],
        input=[
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "call_call7_a", "name": "exec", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_call7_b", "name": "exec", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_call7_a", "output": "1"},
            {"type": "function_call_output", "call_id": "call_call7_b", "output": "2"},
        ],
    )
    assert t.rewritten_ids == {}
    assert [m.tool_call_id for m in t.messages if isinstance(m, ToolMessage)] == ["call_call7_a", "call_call7_b"]


def test_string_input_and_options() -> None:
    t = translate(
        input="hello",
        reasoning={"effort": "high"},
        text={"format": {"type": "json_schema", "name": "Answer", "schema": {"type": "object"}, "strict": True}},
        temperature=0,
        user="u1",
        tool_choice="none",
    )
    assert t.messages == [UserMessage(content="hello")]
    assert t.effort == "high"
    assert t.summary is False
    assert t.output_schema == OutputSchema(kind="json_schema", schema={"type": "object"}, name="Answer")
    assert t.ignored == ["temperature"]
    assert t.user == "u1"
    assert t.tool_choice == "none"
    assert translate(input="x", text={"format": {"type": "json_object"}}).output_schema == structured.JSON_OBJECT
    assert translate(input="x", text={"format": {"type": "text"}}).output_schema is None


def test_images() -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    t = translate(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": url, "detail": "high"},
                ],
            }
        ]
    )
    message = t.messages[0]
    assert isinstance(message, UserMessage)
    assert isinstance(message.content, list)
    image = message.content[1]
    assert isinstance(image, ImagePart)
    assert not isinstance(image.image_url, str)
    assert image.image_url.url == url
    assert image.image_url.detail == "high"


def test_function_tool_choice() -> None:
    t = translate(input="x", tools=[fn("a")], tool_choice={"type": "function", "name": "a"})
    assert t.tool_choice == {"type": "function", "function": {"name": "a"}}
    assert t.echo["tool_choice"] == {"type": "function", "name": "a"}


def test_remap_chat_params_to_responses_fields() -> None:
    t = to_chat(decode_request(msgspec.json.encode(codex_request())))
    exc = t.remap(errors.InvalidRequest("messages[4].content is bad", param="messages[4].content"))
    assert exc.param == "input[7].output"
    assert exc.message == "input[7].output is bad"
    assert t.param("messages[3].tool_calls[1].function.arguments") == "input[6].arguments"
    assert t.param("messages[2].content[0]") == "input[2].content[0]"
    assert t.param("tools[9].function.name") == "tools[7].tools[2].name"
    assert t.param("messages") == "input"


# --- bad input: a 400 naming the Responses field ------------------------------------------------------------------

URL = "data:image/png;base64,iVBORw0KGgo="
USER = {"role": "user", "content": "hi"}
DEEP: Any = {}
for _ in range(70):
    DEEP = {"a": DEEP}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        *(
            ({"input": "x", "tools": [{"type": kind}]}, "tools[0].type")
            for kind in ("file_search", "computer_use_preview", "code_interpreter", "mcp", "image_generation")
        ),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "web_search", "external_web_access": True}]}, "tools[0].type"),
        ({"input": "x", "tools": [fn("a"), {"type": "teleport"}]}, "tools[1].type"),
        (
            {"input": "x", "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "custom"}]}]},
            "tools[0].tools[0].type",
        ),
        (
            {"input": "x", "tools": [{"type": "namespace", "name": "n", "tools": [fn("bad name")]}]},
            "tools[0].tools[0].name",
        ),
        ({"input": "x", "tools": [fn("a"), fn("a")]}, "tools[1].name"),
        ({"input": [{"type": "computer_call_output"}]}, "input[0].type"),
        ({"input": [{"content": "no role"}]}, "input[0].type"),
        ({"input": [USER, {"type": "function_call_output", "call_id": "call9", "output": "x"}]}, "input[1].call_id"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].id"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "name": "a", "arguments": "{}"}]}, "input[0].call_id"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"input": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]}, "input[0].content[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": URL, "detail": "x"}]}]},
            "input[0].content[0].detail",
        ),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 200_000}, "max_output_tokens"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "top_p": -1}, "top_p"),
        ({"input": "x", "top_logprobs": 21}, "top_logprobs"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": "x", "tools": [fn("a")], "tool_choice": {"type": "function", "name": "b"}}, "tool_choice"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "A"}}}, "text.format.schema"),
        ({"input": "x", "metadata": {"deep": DEEP}}, "metadata"),
        ({"input": "x", "tools": [fn("a", parameters=DEEP)]}, "tools[0]"),
        ({"input": [USER, {"type": "message", "role": "user", "content": [DEEP]}]}, "input[1]"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "a", "arguments": "[" * 70 + "]" * 70}]},
            "input[0].arguments",
        ),
        ({"input": []}, "input"),
        ({}, "input"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": 5}, "input"),
    ],
)
def test_bad_input_is_400_with_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        translate(**fields)
    assert caught.value.status == 400
    assert caught.value.param == param, caught.value.message


def test_duplicate_output_and_not_json() -> None:
    items = [
        USER,
        {"type": "function_call", "call_id": "call1", "name": "a", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call1", "output": "1"},
        {"type": "function_call_output", "call_id": "call1", "output": "2"},
    ]
    with pytest.raises(errors.InvalidRequest) as caught:
        translate(input=items, tools=[fn("a")])
    assert caught.value.param == "input[3].call_id"
    with pytest.raises(errors.InvalidRequest) as bad_json:
        decode_request(b'{"model": "m", "input": ')
    assert bad_json.value.code == "invalid_json"


# --- output side -------------------------------------------------------------------------------------------------


def make(**kwargs: Any) -> ResponseStream:
    t = translate(input="x", tools=[fn("exec")], **kwargs)
    return ResponseStream("claude-sonnet-4", echo=t.echo, namespaces={"exec": "ns"} if kwargs else {})


def check(events: list[tuple[str, bytes]], final: ResponseStream) -> list[Any]:
    """Every event valid for the SDK, in order, each item added before its deltas; the terminal event's response
    equals the non-stream object; the SDK's accumulator takes every event."""
    parsed = [EVENT.validate_json(data) for _, data in events]
    assert [name for name, _ in events] == [e.type for e in parsed]
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    assert parsed[0].type == "response.created"
    assert parsed[1].type == "response.in_progress"
    added: set[str] = set()
    done: set[str] = set()
    for e in parsed:
        if e.type == "response.output_item.added":
            assert e.item.id not in added
            assert e.output_index == len(added)
            added.add(e.item.id or "")
        elif e.type == "response.output_item.done":
            done.add(e.item.id or "")
        elif hasattr(e, "item_id"):
            assert e.item_id in added, e.type
            assert e.item_id not in done, e.type
    assert added == done
    terminal = msgspec.json.decode(events[-1][1])
    assert terminal["response"] == final.response()
    Response.model_validate(msgspec.json.decode(final.body()))
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    fired = [f for e in parsed for f in state.handle_event(e)]
    return fired


def test_text_only() -> None:
    rs = make()
    events = rs.start() + rs.text("Hel") + rs.text("") + rs.text("lo") + rs.usage(10, 4, 2) + rs.finish("stop")
    fired = check(events, rs)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    completed = fired[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Hello"
    final = Response.model_validate(rs.response())
    assert final.status == "completed"
    assert final.output_text == "Hello"
    assert final.id.startswith("resp_")
    assert final.output[0].id.startswith("msg_")  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.total_tokens == 12
    assert final.usage.input_tokens_details.cached_tokens == 4
    sse_bytes = sse(events[0])
    assert sse_bytes.startswith(b"event: response.created\ndata: {")
    assert sse_bytes.endswith(b"}\n\n")


def test_text_and_tool_calls() -> None:
    rs = make(parallel_tool_calls=True)
    events = rs.text("Running it.") + rs.tool_call("call01", "exec", '{"x":"ls"}') + rs.tool_call("call02", "exec", "")
    events += rs.usage(5, 0, 9) + rs.finish("tool_calls")
    fired = check(events, rs)
    final = Response.model_validate(rs.response())
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments, c.status) for c in calls] == [
        ("call01", "exec", '{"x":"ls"}', "completed"),
        ("call02", "exec", "", "completed"),
    ]
    assert calls[0].id
    assert calls[0].id.startswith("fc_")
    assert calls[0].namespace == "ns"
    completed = fired[-1].response
    assert completed.output_text == "Running it."
    assert [o.type for o in completed.output] == ["message", "function_call", "function_call"]
    added = [e for e in map(EVENT.validate_json, (d for _, d in events)) if e.type == "response.output_item.added"]
    opened = added[1].item
    assert opened.type == "function_call"
    assert opened.status == "in_progress"
    assert opened.arguments == ""
    assert final.tools[0].type == "function"
    assert final.parallel_tool_calls is True


def test_reasoning_then_text() -> None:
    rs = make(reasoning={"effort": "medium", "summary": "auto"})
    events = rs.reasoning("Think") + rs.reasoning("ing.") + rs.text("Answer") + rs.usage(3, 0, 7, 4)
    events += rs.finish("stop")
    check(events, rs)
    names = [name for name, _ in events][2:8]
    assert names == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ]
    final = Response.model_validate(rs.response())
    reasoning = final.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.id.startswith("rs_")
    assert [s.text for s in reasoning.summary] == ["Thinking."]
    assert final.output_text == "Answer"
    assert final.reasoning is not None
    assert final.reasoning.effort == "medium"
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens == 4


def test_length_is_incomplete() -> None:
    rs = make(max_output_tokens=16)
    events = rs.text("cut sho") + rs.usage(3, 0, 16) + rs.finish("length")
    fired = check(events, rs)
    assert events[-1][0] == "response.incomplete"
    final = Response.model_validate(rs.response())
    assert final.status == "incomplete"
    assert final.max_output_tokens == 16
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert fired[-1].type == "response.incomplete"


def test_error_is_failed() -> None:
    rs = make()
    events = rs.text("partial") + rs.fail(errors.CLIFailed("The CLI exited")) + rs.text("late") + rs.finish("stop")
    check(events, rs)
    assert events[-1][0] == "response.failed"
    final = Response.model_validate(rs.response())
    assert final.status == "failed"
    assert final.error is not None
    assert final.error.code == "server_error"
    assert "The CLI exited" in final.error.message
    limited = ResponseStream("m")
    limited_events = limited.error(429, "rate_limit_error", "rate_limit_exceeded", "slow down")
    check(limited_events, limited)
    assert Response.model_validate(limited.response()).error.code == "rate_limit_exceeded"  # type: ignore[union-attr]


def test_empty_answer_and_error_body() -> None:
    rs = ResponseStream("m", response_id="resp_fixed", created_at=1)
    events = rs.finish("stop")
    check(events, rs)
    assert rs.response()["output"] == []
    assert rs.response()["id"] == "resp_fixed"
    exc = errors.InvalidRequest("bad", param="input[0].type")
    assert msgspec.json.decode(wire.error_body(exc)) == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "input[0].type",
            "code": "invalid_request",
        }
    }


def test_feed_core_events_and_to_turn() -> None:
    from maxproxy.turns.core import Keepalive, Outcome, TextDelta, ToolCallEvent
    from maxproxy.turns.messages import PromptTokensDetails, Usage

    request = decode_request(body(input="x", tools=[fn("exec")], max_output_tokens=64, reasoning={"effort": "low"}))
    t = to_chat(request)
    turn = wire.to_turn(request, t)
    assert turn.max_output_tokens == 64
    assert turn.limit_params == (("max_output_tokens", 64),)
    assert turn.effort == "low"
    assert turn.tools == t.tools
    rs = ResponseStream.for_request(request, t)
    call = ToolCallEvent(0, "call01", "exec", "{}")
    usage = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10, prompt_tokens_details=PromptTokensDetails(2))
    events = [
        e
        for ev in (TextDelta("hi"), Keepalive(), call, Outcome("tool_calls", "hi", [call], usage))
        for e in rs.feed(ev)
    ]
    check(events, rs)
    final = Response.model_validate(rs.response())
    assert final.status == "completed"
    assert final.usage is not None
    assert final.usage.input_tokens == 7
    assert [o.type for o in final.output] == ["message", "function_call"]


@pytest.mark.parametrize(
    ("fields", "hints"),
    [
        ({"metadata": {"conversation_id": "chat-7"}, "prompt_cache_key": "k"}, ("chat-7", "k", None)),
        ({"metadata": {"conversation_id": 7}, "safety_identifier": "u1"}, (None, None, "u1")),
        ({"user": "u2", "safety_identifier": "u1"}, (None, None, "u2")),
    ],
)
def test_conversation_hints_reach_the_turn(fields: dict[str, Any], hints: tuple[str | None, ...]) -> None:
    request = decode_request(body(input="x", **fields))
    turn = wire.to_turn(request, to_chat(request))
    assert (turn.conversation_id, turn.prompt_cache_key, turn.user) == hints
