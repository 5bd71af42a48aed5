"""Anthropic's Messages API through the real CLI, read by the `anthropic` SDK: plain and streamed answers (the SDK's
stream helper, its final message and usage), the system prompt (Claude Code's billing-header block left out), images
and PDFs, a tool round trip that goes on with the waiting CLI turn, thinking with its signature, the output limit as
`max_tokens`, every error in Anthropic's shape with the SDK's exception class, `x-api-key` with a keys file, a
conversation that continues on its held worker, and bad input as a 400, never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, cast

import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import ContentBlockParam, MessageParam, ToolParam
from maxproxy.bench.upstream import FakeUpstream, Reply, Text, Thinking, ToolUse

from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import holding
from tests.e2e.test_keys import keys_file
from tests.e2e.test_sessions import pool_of, texts
from tests.e2e.test_tools import calls, result_text, tool_results

MODEL = "claude-sonnet-4"
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")).decode()
PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF").decode()


def blocks(dumped: Iterable[dict[str, Any]]) -> list[ContentBlockParam]:
    """An answer's blocks sent back as history: the SDK's dumps of its response blocks are its request blocks."""
    return cast(list[ContentBlockParam], list(dumped))


@pytest.fixture
async def client(proxy: Proxy) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=proxy.url, api_key="not-needed", max_retries=0) as sdk:
        yield sdk


async def raw(proxy: Proxy, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with proxy.http.post(f"{proxy.url}/v1/messages", data=data, headers=headers or {}) as response:
        return response.status, dict(response.headers), await response.read()


async def test_a_plain_answer(client: AsyncAnthropic, proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("Hello from fake upstream!", cache_read=5, cache_creation=3)
    system: Any = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=9.9.9; cc_entrypoint=client-test;"},
        {"type": "text", "text": "Answer like a pirate.", "cache_control": {"type": "ephemeral"}},
    ]
    raw_answer = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=1024, system=system, messages=HI, extra_body={"temperature": 0.2, "top_k": 5}
    )
    message = await raw_answer.parse()
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", MODEL)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from fake upstream!"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    # Anthropic's input_tokens leaves the cached tokens out.
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (10, 5, 3)
    assert usage.output_tokens == 1
    assert raw_answer.headers["x-maxproxy-ignored-params"] == "temperature,top_k"
    assert raw_answer.headers["request-id"].startswith("req_")
    [sent] = upstream.messages_requests
    assert any("Answer like a pirate." in text for text in sent.texts())
    # The client's billing line is not prompt (the CLI sends its own, which is why another marker is checked).
    assert not any("client-test" in text for text in [*sent.texts(), sent.system_text()])


async def test_a_streamed_answer(client: AsyncAnthropic, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("one two three", pieces=3)
    async with client.messages.stream(model=MODEL, max_tokens=256, messages=HI) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "one two three"
    assert len(pieces) == 3
    assert final.content[0].type == "text"
    assert final.content[0].text == "one two three"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 3)

    events = [
        event.type async for event in await client.messages.create(model=MODEL, max_tokens=9, messages=HI, stream=True)
    ]
    assert events[0] == "message_start"
    assert events[1:4] == ["content_block_start", "content_block_delta", "content_block_delta"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


async def test_images_and_documents_reach_the_model(client: AsyncAnthropic, upstream: FakeUpstream) -> None:
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}},
        {"type": "text", "text": "What is this?"},
    ]
    await client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": content}])
    [sent] = upstream.messages_requests
    blocks = [b for m in sent.messages for b in m["content"] if b["type"] in ("image", "document")]
    assert [(b["type"], b["source"]["media_type"], b["source"]["data"]) for b in blocks] == [
        ("image", "image/png", PNG),
        ("document", "application/pdf", PDF),
    ]
    url_image: Any = [{"type": "image", "source": {"type": "url", "url": "https://example.invalid/a.png"}}]
    with pytest.raises(anthropic.BadRequestError, match="fetches nothing"):
        await client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": url_image}])


async def test_a_tool_round_trip_on_the_waiting_turn(client: AsyncAnthropic, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Paris"}), text="Let me check."), Reply.text("Sunny, 22C."))
    history: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.messages.create(model=MODEL, max_tokens=512, messages=history, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    assert [block.type for block in first.content] == ["text", "tool_use"]
    use = first.content[1]
    assert use.type == "tool_use"
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    [listed] = upstream.messages_requests[0].body["tools"]
    assert (listed["name"], listed["input_schema"]) == ("get_weather", WEATHER["input_schema"])

    history += [
        {"role": "assistant", "content": blocks(block.model_dump(exclude_none=True) for block in first.content)},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "22C and sunny"}]},
    ]
    second = await client.messages.create(model=MODEL, max_tokens=512, messages=history, tools=[WEATHER])
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    assert second.content[0].text == "Sunny, 22C."
    # The same CLI turn went on: the model got the result for its own tool_use, nothing was asked twice.
    assert len(upstream.messages_requests) == 2
    [result] = tool_results(upstream.messages_requests[1])
    assert result["tool_use_id"] == "toolu_fake_1_1"
    assert result_text(result).startswith("22C and sunny")


async def test_a_streamed_tool_call(client: AsyncAnthropic, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Oslo"})))
    async with client.messages.stream(
        model=MODEL, max_tokens=512, messages=HI, tools=[WEATHER], tool_choice={"type": "any"}
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = [block for block in final.content if block.type == "tool_use"]
    assert use.type == "tool_use"
    assert use.input == {"city": "Oslo"}


async def test_thinking_with_its_signature(client: AsyncAnthropic, upstream: FakeUpstream) -> None:
    upstream.default = Reply(blocks=(Thinking("Let me think."), Text.of("42")))
    async with client.messages.stream(
        model=MODEL, max_tokens=2048, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024}
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert "thinking" in kinds
    assert "signature" in kinds
    assert [block.type for block in final.content] == ["thinking", "text"]
    thought = final.content[0]
    assert thought.type == "thinking"
    assert (thought.thinking, thought.signature) == ("Let me think.", "c2lnbmF0dXJl")
    whole = await client.messages.create(
        model=MODEL, max_tokens=2048, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert [(b.type, getattr(b, "signature", None)) for b in whole.content] == [
        ("thinking", "c2lnbmF0dXJl"),
        ("text", None),
    ]
    # Not asked for: no thinking blocks (`content[0].text` stays the answer).
    plain = await client.messages.create(model=MODEL, max_tokens=2048, messages=HI)
    assert [block.type for block in plain.content] == ["text"]


async def test_the_output_limit_is_max_tokens(client: AsyncAnthropic, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("cut here", stop_reason="max_tokens")
    message = await client.messages.create(model=MODEL, max_tokens=16, messages=HI)
    assert message.stop_reason == "max_tokens"
    assert upstream.messages_requests[0].body["max_tokens"] == 16
    async with client.messages.stream(model=MODEL, max_tokens=16, messages=HI) as stream:
        assert (await stream.get_final_message()).stop_reason == "max_tokens"


@pytest.mark.parametrize(
    ("status", "kind", "error"),
    [
        (401, "api_error", anthropic.InternalServerError),  # the CLI's login failed: maxproxy's 502
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.OverloadedError),
    ],
)
async def test_upstream_errors_in_anthropics_shape(
    client: AsyncAnthropic, upstream: FakeUpstream, status: int, kind: str, error: type[Exception]
) -> None:
    upstream.default = Reply.error(status)
    with pytest.raises(error) as caught:
        await client.messages.create(model=MODEL, max_tokens=64, messages=HI)
    assert isinstance(caught.value, anthropic.APIStatusError)
    body: Any = caught.value.body  # the SDK types an error's body as `object`
    assert body == {"type": "error", "error": {"type": kind, "message": body["error"]["message"]}}
    assert caught.value.response.headers["request-id"].startswith("req_")
    if status == 429:
        assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_maxproxys_own_errors(client: AsyncAnthropic, proxy: Proxy) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="claude-nonesuch", max_tokens=64, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model=MODEL, max_tokens=64, messages=HI, stop_sequences=["END"])
    async with proxy.http.get(f"{proxy.url}/v1/messages") as response:  # 405, from aiohttp's router
        assert response.status == 405
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    async with proxy.http.post(f"{proxy.url}/v1/messages/nonesuch", json={}) as response:
        assert response.status == 404
        assert await response.json() == {
            "type": "error",
            "error": {
                "type": "not_found_error",
                "message": "Unknown path; see GET /v1/models and POST /v1/chat/completions",
            },
        }
        assert response.headers["request-id"].startswith("req_")


async def test_keys_by_x_api_key(cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await start_proxy(keys_file=str(keys_file(tmp_path)))
    async with AsyncAnthropic(base_url=proxy.url, api_key="sk-alice-0001", max_retries=0) as alice:
        message = await alice.messages.create(model=MODEL, max_tokens=64, messages=HI)
        assert message.content[0].type == "text"
        await alice.messages.create(model=MODEL, max_tokens=64, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as limited:  # alice's rpm is 2
            await alice.messages.create(model=MODEL, max_tokens=64, messages=HI)
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(limited.value.response.headers["retry-after"]) >= 1
    async with AsyncAnthropic(base_url=proxy.url, api_key="sk-wrong", max_retries=0) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await stranger.messages.create(model=MODEL, max_tokens=64, messages=HI)
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    # Claude Code's headers: a browser-access flag with no Origin, betas maxproxy does not apply.
    headers = {
        "x-api-key": "sk-carol-0003",
        "anthropic-version": "2023-06-01",
        "anthropic-dangerous-direct-browser-access": "true",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    status, answered, _ = await raw(proxy, {"model": MODEL, "max_tokens": 64, "messages": HI}, headers)
    assert status == 200
    assert answered["x-maxproxy-ignored-betas"] == "claude-code-20250219"
    # The owner is the key's, whichever header carries it: both see the same sessions.
    async with proxy.http.get(f"{proxy.url}/v1/sessions", headers={"Authorization": "Bearer sk-carol-0003"}) as r:
        assert len((await r.json())["data"]) == 1


async def test_a_conversation_continues_on_its_held_worker(
    client: AsyncAnthropic, proxy: Proxy, upstream: FakeUpstream
) -> None:
    upstream.push(Reply.text("Noted, Alice."), Reply.text("Tea it is."), Reply.text("You are Alice."))
    history: list[MessageParam] = []
    for text in ("My name is Alice", "I like tea", "What is my name?"):
        history.append({"role": "user", "content": text})
        message = await client.messages.create(model=MODEL, max_tokens=256, messages=history)
        history.append({"role": "assistant", "content": blocks(b.model_dump() for b in message.content)})
        await wait_for(lambda: pool_of(proxy).busy == 0)
        if text == "I like tea":
            [held] = holding(pool_of(proxy))
    assert held.lines_written == 1  # only turn 3's new user message went to the CLI
    assert texts(upstream.messages_requests[-1].messages)[-1] == ("user", "What is my name?")
    assert holding(pool_of(proxy)) == [held]


BAD_INPUT: list[tuple[str, Any, str]] = [
    ("not JSON", b"{", "not valid JSON"),
    ("no max_tokens", {"model": MODEL, "messages": HI}, "max_tokens"),
    ("max_tokens too big", {"model": MODEL, "messages": HI, "max_tokens": 10**9}, "max_tokens"),
    ("no messages", {"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
    ("bad role", {"model": MODEL, "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "role"),
    (
        "only system",
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        "last message",
    ),
    (
        "unknown block",
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "server_tool_use"}]}]},
        "content[0]",
    ),
    (
        "server tool",
        {"model": MODEL, "max_tokens": 5, "messages": HI, "tools": [{"type": "web_search_20250305", "name": "w"}]},
        "web_search_20250305",
    ),
    (
        "bash tool",
        {"model": MODEL, "max_tokens": 5, "messages": HI, "tools": [{"type": "bash_20250124", "name": "bash"}]},
        "bash_20250124",
    ),
    ("bad tool name", {"model": MODEL, "max_tokens": 5, "messages": HI, "tools": [{"name": "a b"}]}, "tools[0].name"),
    (
        "bad schema",
        {"model": MODEL, "max_tokens": 5, "messages": HI, "tools": [{"name": "t", "input_schema": {"type": 3}}]},
        "tools[0].input_schema",
    ),
    (
        "tool_choice names no tool",
        {
            "model": MODEL,
            "max_tokens": 5,
            "messages": HI,
            "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "x"},
        },
        "tool_choice",
    ),
    (
        "budget too small",
        {"model": MODEL, "max_tokens": 5, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": 5}},
        "budget_tokens",
    ),
    (
        "prefill",
        {"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": "Sure"}]},
        "prefill",
    ),
    (
        "orphan tool_result",
        {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "1"}]}],
        },
        "messages[0].content[0]",
    ),
    (
        "tool_use unanswered",
        {
            "model": MODEL,
            "max_tokens": 5,
            "tools": [WEATHER],
            "messages": [
                *HI,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
                },
                {"role": "user", "content": "and?"},
            ],
        },
        "messages[1]",
    ),
    (
        "url document",
        {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "document", "source": {"type": "url", "url": "https://x.invalid/a.pdf"}}],
                }
            ],
        },
        "document",
    ),
    (
        "gif document",
        {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}}
                    ],
                }
            ],
        },
        "document",
    ),
    (
        "bad image data",
        {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}
                    ],
                }
            ],
        },
        "base64",
    ),
    ("mcp servers", {"model": MODEL, "max_tokens": 5, "messages": HI, "mcp_servers": [{"type": "url"}]}, "mcp_servers"),
    (
        "too deep",
        {"model": MODEL, "max_tokens": 5, "messages": HI, "metadata": json.loads("[" * 80 + "]" * 80)},
        "metadata",
    ),
]


@pytest.mark.parametrize(("body", "mention"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
async def test_bad_input_is_anthropics_400(proxy: Proxy, upstream: FakeUpstream, body: Any, mention: str) -> None:
    status, headers, payload = await raw(proxy, body)
    assert status == 400, payload
    error = json.loads(payload)
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert mention in error["error"]["message"]
    assert headers["request-id"].startswith("req_")
    assert not upstream.messages_requests


async def test_an_error_after_the_stream_opened_is_an_error_event(
    client: AsyncAnthropic, upstream: FakeUpstream
) -> None:
    # The stream breaks after two deltas, and the CLI's non-streaming fallback fails too.
    upstream.push(Reply(blocks=(Text(("one ", "two ", "three ", "four")),), drop_after_deltas=2), Reply.error(500))
    seen: list[str] = []

    async def read() -> None:
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=HI) as stream:
            async for text in stream.text_stream:  # what came before the error stays seen
                seen.append(text)

    with pytest.raises(anthropic.APIStatusError) as caught:
        await read()
    assert "".join(seen) == "one two "
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": caught.value.body["error"]["message"]},  # type: ignore[index]
    }
