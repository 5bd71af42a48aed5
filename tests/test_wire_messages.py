"""The Messages wire without a CLI: a request's translation into the neutral turn (system, tool_use/tool_result
pairing, thinking dropped, tool_choice and thinking mapped, conversation hints), the SSE events a `MessageStream`
writes for the core's events, Anthropic's usage, and Anthropic's error types by status."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from maxproxy import errors
from maxproxy.turns.core import (
    Event,
    Keepalive,
    Outcome,
    ReasoningDelta,
    ReasoningSignature,
    TextDelta,
    ToolCallEvent,
)
from maxproxy.turns.messages import (
    AssistantMessage,
    PromptTokensDetails,
    SystemMessage,
    TextPart,
    ToolMessage,
    Usage,
    UserMessage,
)
from maxproxy.wire import messages


def translate(headers: dict[str, str] | None = None, **body: Any) -> messages.Translated:
    body = {"model": "claude-sonnet-4", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **body}
    return messages.translate(messages.decode_request(msgspec.json.encode(body)), headers or {})


def frames(raw: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw:
        event, data = frame.decode().strip().split("\n")
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_system_blocks_without_claude_codes_billing_line() -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328; cc_entrypoint=cli;"},
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
    ]
    [first, _] = translate(system=system).turn.messages
    assert first == SystemMessage(content=[TextPart(text="Be brief.")])
    assert translate(system="Be kind.").turn.messages[0] == SystemMessage(content="Be kind.")


def test_a_system_message_between_the_others_as_claude_code_sends_it() -> None:
    env = "# Environment\nPrimary working directory: /w"
    for content in (env, [{"type": "text", "text": env, "cache_control": {"type": "ephemeral"}}]):
        history = [{"role": "user", "content": "hi"}, {"role": "system", "content": content}]
        assert translate(messages=history).turn.messages[1] == SystemMessage(content=env)  # blocks or not: alike
    with pytest.raises(errors.InvalidRequest) as caught:
        translate(messages=[{"role": "system", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]}])
    assert caught.value.param == "messages[0].content[0].type"


def test_tool_use_and_tool_result_pair_as_chats_tool_calls() -> None:
    history = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "callabc", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "callabc", "content": [{"type": "text", "text": "22C"}]},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    translated = translate(messages=history)
    user, assistant, result, follow = translated.turn.messages
    assert user == UserMessage(content="Weather?")
    assert isinstance(assistant, AssistantMessage)
    assert assistant.content == "Let me check."  # thinking dropped: the CLI keeps its own
    [call] = assistant.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "callabc",
        "get_weather",
        {"city": "Paris"},
    )
    assert result == ToolMessage(content="22C", tool_call_id="callabc")
    assert follow == UserMessage(content=[TextPart(text="Thanks")])
    assert translated.sources == ["messages[0]", "messages[1]", "messages[2].content[0]", "messages[2]"]


def test_an_error_result_says_so() -> None:
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "t", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "boom", "is_error": True}],
        },
    ]
    result = translate(messages=history).turn.messages[-1]
    assert result == ToolMessage(content="[The tool reported an error]\nboom", tool_call_id="c1")


@pytest.mark.parametrize(
    ("choice", "neutral", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "t"}, {"type": "function", "function": {"name": "t"}}, None),
        ({"type": "none"}, "none", None),
    ],
)
def test_tool_choice(choice: dict[str, Any], neutral: Any, parallel: bool | None) -> None:
    tools = [{"name": "t", "input_schema": {"type": "object"}, "defer_loading": True, "cache_control": {}}]
    turn = translate(tools=tools, tool_choice=choice)
    assert (turn.turn.tool_choice, turn.turn.parallel_tool_calls) == (neutral, parallel)
    assert turn.turn.tools == [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    assert turn.ignored == ["tools.defer_loading"]


@pytest.mark.parametrize(
    ("thinking", "effort", "shown"),
    [
        (None, None, False),
        ({"type": "enabled", "budget_tokens": 1024}, "low", True),
        ({"type": "enabled", "budget_tokens": 8000}, "medium", True),
        ({"type": "enabled", "budget_tokens": 31999, "display": "omitted"}, "high", True),  # Claude Code's
        ({"type": "enabled", "budget_tokens": 64000}, "max", True),
        ({"type": "adaptive"}, None, True),
        ({"type": "disabled"}, "none", False),
    ],
)
def test_thinking_as_effort(thinking: dict[str, Any] | None, effort: str | None, shown: bool) -> None:
    translated = translate(thinking=thinking) if thinking else translate()
    assert (translated.turn.effort, translated.thinking) == (effort, shown)
    assert (
        translate(output_config={"effort": "xhigh"}, thinking=thinking or {"type": "adaptive"}).turn.effort == "xhigh"
    )


def test_conversation_hints_and_ignored_fields() -> None:
    translated = translate(
        {"X-Claude-Code-Session-Id": "sess-1"}, metadata={"user_id": '{"session_id":"s"}'}, temperature=0.5, top_p=0.9
    )
    assert (translated.turn.conversation_id, translated.turn.user) == ("sess-1", '{"session_id":"s"}')
    assert translated.ignored == ["temperature", "top_p"]
    assert translated.turn.limit_params == (("max_tokens", 100),)
    assert messages.ignored_betas("claude-code-20250219, interleaved-thinking-2025-05-14,") == ["claude-code-20250219"]


def test_neutral_params_are_named_as_the_messages_fields() -> None:
    translated = translate(system="s", tools=[{"name": "t", "input_schema": {"type": "object"}}])
    exc = translated.remap(
        errors.InvalidRequest("tools[0].function.parameters is bad", param="tools[0].function.parameters")
    )
    assert (exc.message, exc.param) == ("tools[0].input_schema is bad", "tools[0].input_schema")
    exc = translated.remap(errors.InvalidRequest("messages[1].content has none", param="messages[1].content"))
    assert exc.param == "messages[0].content"


def outcome(**kw: Any) -> Outcome:
    usage = Usage(
        prompt_tokens=18, completion_tokens=4, total_tokens=22, prompt_tokens_details=PromptTokensDetails(5, 3)
    )
    return Outcome(**{"finish_reason": "stop", "text": "", "calls": [], "usage": usage, **kw})


def test_a_stream_of_thinking_text_and_a_call() -> None:
    stream = messages.MessageStream("m", thinking=True)
    raw = [stream.start()]
    call = ToolCallEvent(0, "callx", "get_weather", '{"city":"Oslo"}')
    events: list[Event] = [
        ReasoningDelta("hm"),
        ReasoningSignature("sig"),
        TextDelta("A"),
        TextDelta("B"),
        Keepalive(),
        call,
    ]
    for event in events:
        raw += stream.feed(event)
    raw += stream.feed(outcome(finish_reason="tool_calls", text="AB", calls=[call]))
    written = frames(raw)
    assert [(kind, data.get("index"), (data.get("delta") or {}).get("type")) for kind, data in written] == [
        ("message_start", None, None),
        ("content_block_start", 0, None),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"),
        ("ping", None, None),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert written[10][1]["content_block"] == {"type": "tool_use", "id": "callx", "name": "get_weather", "input": {}}
    assert written[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    # Anthropic's input_tokens leaves the cache's tokens out; the neutral prompt_tokens counts them.
    assert written[-2][1]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 4,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 5,
    }


def test_thinking_not_asked_for_or_omitted() -> None:
    hidden = messages.MessageStream("m")
    assert hidden.feed(ReasoningDelta("hm")) == []
    assert hidden.feed(ReasoningSignature("s")) == []
    omitted = messages.MessageStream("m", thinking=True, omit_thinking=True)
    written = frames(omitted.feed(ReasoningDelta("hm")) + omitted.feed(ReasoningSignature("s")))
    assert [kind for kind, _ in written] == ["content_block_start", "content_block_delta", "content_block_stop"]
    assert written[1][1]["delta"] == {"type": "signature_delta", "signature": "s"}


def test_an_empty_answer_still_has_a_text_block_and_errors_end_the_stream() -> None:
    stream = messages.MessageStream("m")
    kinds = [kind for kind, _ in frames(stream.feed(outcome()))]
    assert kinds == ["content_block_start", "content_block_stop", "message_delta", "message_stop"]
    body = messages.MessageStream("m", thinking=True).message(outcome(text="42", thoughts=(("hm", "sig"),)))
    assert body["content"] == [
        {"type": "thinking", "thinking": "hm", "signature": "sig"},
        {"type": "text", "text": "42"},
    ]
    failed = messages.MessageStream("m")
    written = frames(failed.feed(TextDelta("x")) + failed.feed(outcome(error=errors.Overloaded("busy"))))
    assert written[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    assert written[-2][0] == "content_block_stop"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (errors.InvalidRequest("x"), "invalid_request_error"),
        (errors.AuthenticationFailed("x"), "authentication_error"),
        (errors.Forbidden("x"), "permission_error"),
        (errors.NotFound("x"), "not_found_error"),
        (errors.MethodNotAllowed("x"), "invalid_request_error"),
        (errors.PayloadTooLarge("x"), "request_too_large"),
        (errors.RateLimited("x"), "rate_limit_error"),
        (errors.ProxyError("x"), "api_error"),
        (errors.UpstreamError("x"), "api_error"),
        (errors.CLINotLoggedIn("x"), "api_error"),
        (errors.Timeout("x"), "api_error"),
        (errors.Overloaded("x"), "overloaded_error"),
    ],
)
def test_anthropic_error_types(exc: errors.ProxyError, kind: str) -> None:
    assert json.loads(exc.anthropic_body()) == {"type": "error", "error": {"type": kind, "message": "x"}}
