"""Chat completions end to end: real `openai` SDK and raw HTTP → maxproxy → the real pinned CLI → the fake upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from maxproxy.bench.upstream import FakeUpstream, Reply, Text, Thinking, ToolUse

from tests import sse
from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import HELLO
from tests.procs import children
from tests.test_prompt import PNG


async def post(proxy: Proxy, body: dict[str, Any], **kw: Any) -> Any:
    return await proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body, **kw)


async def test_non_stream_answer_with_usage(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("Four.", input_tokens=10, cache_read=5, cache_creation=3))
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "claude-sonnet-4"
    choice = answer.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "Four.", "stop")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 18
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 5
    assert answer.usage.completion_tokens == 1
    assert answer.usage.total_tokens == 19
    assert upstream.messages_requests[0].body["model"] == "claude-sonnet-5-5"  # `sonnet` alias, resolved by the CLI


async def test_stream_wire_format_is_exact(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply(blocks=(Text(("Hello ", "there", ", fri", "end")),)))
    async with await post(proxy, {"model": "claude-sonnet-4", "messages": HELLO, "stream": True}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = await sse.read(response)
    assert stream.data[-1] == "[DONE]"
    chunks = stream.chunks
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "claude-sonnet-4", "chat.completion.chunk")
    }
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["Hello ", "there", ", fri", "end"]
    assert all("usage" not in c for c in chunks)  # not asked for


async def test_stream_usage_chunk_only_when_asked(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("ok", input_tokens=7))
    body = {"model": "claude-sonnet-4", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    async with await post(proxy, body) as response:
        stream = await sse.read(response)
    chunks = stream.chunks
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 7
    assert chunks[-1]["usage"]["total_tokens"] == 7 + chunks[-1]["usage"]["completion_tokens"]
    assert stream.data[-1] == "[DONE]"


async def test_sdk_stream_and_non_stream_give_the_same_text(proxy: Proxy, upstream: FakeUpstream) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 5
    upstream.default = Reply.text(text, pieces=12)
    completion = await proxy.openai.chat.completions.create(model="claude-opus-4", messages=HELLO)
    streamed = []
    stream = await proxy.openai.chat.completions.create(
        model="claude-opus-4", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    usage = None
    async for chunk in stream:
        if chunk.choices:
            streamed.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert completion.choices[0].message.content == text == "".join(streamed)
    assert usage is not None
    assert completion.usage is not None
    assert usage.completion_tokens == completion.usage.completion_tokens


async def test_history_reaches_the_model_in_order(proxy: Proxy, upstream: FakeUpstream) -> None:
    await proxy.openai.chat.completions.create(
        model="claude-sonnet-4",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "My name is Alice"},
            {"role": "assistant", "content": "Nice to meet you, Alice"},
            {"role": "user", "content": "I like tea"},
            {"role": "assistant", "content": "Noted: tea"},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    [call] = upstream.messages_requests
    turns = [(m["role"], m["content"]) for m in call.messages if m["role"] != "system"]
    texts = [
        (role, content if isinstance(content, str) else "".join(b.get("text", "") for b in content))
        for role, content in turns
    ]
    assert [role for role, _ in texts] == ["user", "assistant", "user", "assistant", "user"]
    assert texts[0][1] == "<system_prompt>\nYou are terse.\n</system_prompt>My name is Alice"
    assert [text for _, text in texts[1:]] == [
        "Nice to meet you, Alice",
        "I like tea",
        "Noted: tea",
        "What is my name?",
    ]


async def test_system_prompt_replace_mode_reaches_the_system_field(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(system_prompt_mode="replace")
    await proxy.openai.chat.completions.create(
        model="claude-sonnet-4", messages=[{"role": "system", "content": "SYSTEM-MARKER"}, *HELLO]
    )
    [call] = upstream.messages_requests
    assert "SYSTEM-MARKER" in call.system_text()
    assert not any("SYSTEM-MARKER" in text for text in call.texts())


async def test_image_reaches_the_model_as_an_image_block(proxy: Proxy, upstream: FakeUpstream) -> None:
    await proxy.openai.chat.completions.create(
        model="claude-sonnet-4",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    )
    [call] = upstream.messages_requests
    blocks = call.messages[0]["content"]
    images = [b for b in blocks if b["type"] == "image"]
    assert images == [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]


async def test_large_prompt_and_dash_prompt_go_through_stdin_verbatim(proxy: Proxy, upstream: FakeUpstream) -> None:
    big = "x" * 200_000
    for text in (big, "--help", "-p /etc/passwd", "/clear", "@secret.txt"):
        answer = await proxy.openai.chat.completions.create(
            model="claude-sonnet-4", messages=[{"role": "user", "content": text}]
        )
        assert answer.choices[0].message.content == "Hello from fake upstream!"
        assert upstream.messages_requests[-1].messages[0]["content"][0]["text"] == text


async def test_prompt_never_appears_on_the_cli_command_line(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply(hang_before_headers=True))
    secret = "PROMPT-MARKER-7f3a"
    request = asyncio.create_task(
        proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=[{"role": "user", "content": secret}])
    )
    await wait_for(lambda: bool(upstream.messages_requests))
    workers = children_cmdlines()
    assert workers
    assert all(secret not in cmdline for cmdline in workers)
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)


def children_cmdlines() -> list[str]:
    import os

    return [c for c in children(os.getpid()) if "claude" in c]


async def test_output_limit_gives_finish_reason_length(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("cut here", stop_reason="max_tokens")
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO, max_tokens=16)
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.content == "cut here"
    assert upstream.messages_requests[0].body["max_tokens"] == 16
    stream = await proxy.openai.chat.completions.create(
        model="claude-sonnet-4", messages=HELLO, max_completion_tokens=16, stream=True
    )
    finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert finishes[-1] == "length"


async def test_unsupported_sampling_fields_are_accepted_and_named(proxy: Proxy) -> None:
    body = {
        "model": "claude-sonnet-4",
        "messages": HELLO,
        "temperature": 0,
        "top_p": 0.5,
        "stop": ["x"],
        "seed": 1,
        "user": "u1",
        "metadata": {"a": "b"},
    }
    async with await post(proxy, body) as response:
        assert response.status == 200
        assert response.headers["x-maxproxy-ignored-params"] == "temperature,top_p,stop,seed"
        assert response.headers["x-request-id"]


async def test_reasoning_effort_reaches_the_model(proxy: Proxy, upstream: FakeUpstream) -> None:
    await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO, reasoning_effort="high")
    assert upstream.messages_requests[0].body["output_config"]["effort"] == "high"


async def test_thinking_stays_out_of_the_answer(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply(blocks=(Thinking("pondering deeply"), Text(("The ", "answer.")))))
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "The answer."


async def test_thinking_comes_as_reasoning_content(proxy: Proxy, upstream: FakeUpstream) -> None:
    thought = Reply(blocks=(Thinking("pondering deeply"), Text(("The ", "answer."))))
    upstream.push(thought, thought)
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert (answer.choices[0].message.model_extra or {}).get("reasoning_content") == "pondering deeply"
    async with await post(proxy, {"model": "claude-sonnet-4", "messages": HELLO, "stream": True}) as response:
        stream = await sse.read(response)
    deltas = [c["choices"][0]["delta"] for c in stream.chunks if c.get("choices")]
    reasoning = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    assert "".join(reasoning) == "pondering deeply"
    first_reasoning = next(i for i, d in enumerate(deltas) if "reasoning_content" in d)
    first_text = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert first_reasoning < first_text  # the thinking streams before the answer, as the model wrote it
    assert stream.text == "The answer."
    # Without thinking nothing extra appears.
    plain = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert "reasoning_content" not in (plain.choices[0].message.model_extra or {})


async def test_retried_stream_is_not_shown_twice(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(upstream_retries=2)
    text = Text(("Hello ", "from ", "a retried ", "stream."))
    upstream.push(Reply(blocks=(text,), drop_after_deltas=2), Reply(blocks=(text,)))
    async with await post(proxy, {"model": "claude-sonnet-4", "messages": HELLO, "stream": True}) as response:
        stream = await sse.read(response)
    assert stream.text == "Hello from a retried stream."
    assert stream.chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(upstream.messages_requests) == 2


async def test_many_requests_in_parallel(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("parallel ok", pieces=3, delay=0.01)
    answers = await asyncio.gather(
        *(
            proxy.openai.chat.completions.create(
                model="claude-haiku-4", messages=[{"role": "user", "content": f"q{i}"}]
            )
            for i in range(4)
        )
    )
    assert {a.choices[0].message.content for a in answers} == {"parallel ok"}
    asked = sorted(json.dumps(r.messages[0]["content"]) for r in upstream.messages_requests)
    assert len(asked) == 4


async def test_cli_tool_turn_is_one_answer(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    """With a built-in tool enabled by settings, the CLI runs it and the client gets the text around it."""
    proxy = await start_proxy(cli_tools="Bash")
    upstream.push(
        Reply(
            blocks=(Text(("Running it.",)), ToolUse("Bash", {"command": "echo hi-from-tool"})), stop_reason="tool_use"
        ),
        Reply.text("The tool said hi."),
    )
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "Running it.\n\nThe tool said hi."
    assert answer.choices[0].finish_reason == "stop"
    first, second = upstream.messages_requests
    assert "Bash" in [t["name"] for t in first.body["tools"]]
    results = [
        b
        for m in second.messages
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert "hi-from-tool" in json.dumps(results)


async def test_usage_is_openais_shape_exactly(proxy: Proxy, upstream: FakeUpstream) -> None:
    """The neutral usage knows more (cache writes, for Anthropic's API); chat shows OpenAI's fields only."""
    body = {"model": "claude-sonnet-4", "messages": HELLO, "stream_options": {"include_usage": True}}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json={**body, "stream": False}) as response:
        usage = (await response.json())["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}
    assert set(usage["prompt_tokens_details"]) == {"cached_tokens"}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json={**body, "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in (await response.text()).splitlines() if line.startswith("data: {")]
    [streamed] = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    assert streamed == usage
