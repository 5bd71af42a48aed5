"""OpenAI function calling through the real CLI: the client's tools are listed to the model under their own names,
the model's calls come back as `tool_calls`, and the client's `tool` messages go to the waiting CLI turn as the calls'
results (not as a new message), so the model goes on where it stopped."""

from __future__ import annotations

import json
import re
from typing import Any

from maxproxy.bench.upstream import FakeUpstream, Received, Reply, Text, ToolUse
from maxproxy.pool import Pool, WorkerState
from maxproxy.state import POOL
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam

from tests import sse
from tests.conftest import Proxy, ProxyFactory, wait_for
from tests.e2e import holding

MODEL = "claude-sonnet-4"


def function(name: str, description: str = "", **properties: str) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description or f"The {name.replace('_', ' ')} tool",
            "parameters": {
                "type": "object",
                "properties": {p: {"type": t} for p, t in properties.items()},
                "required": list(properties),
            },
        },
    }


WEATHER = function("get_weather", "Current weather in a city", city="string")
TIME = function("get_time", "Local time in a city", city="string")


def calls(*uses: ToolUse, text: str | None = None) -> Reply:
    """An upstream answer that calls tools (after some text)."""
    blocks: tuple[Text | ToolUse, ...] = ((Text.of(text),) if text else ()) + uses
    return Reply(blocks=blocks, stop_reason="tool_use")


def tool_results(received: Received) -> list[dict[str, Any]]:
    """The tool_result blocks of the last user message the upstream received."""
    content = [m for m in received.messages if m["role"] == "user"][-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def result_text(block: dict[str, Any]) -> str:
    content = block["content"]
    return content if isinstance(content, str) else "".join(c.get("text", "") for c in content)


def pool_of(proxy: Proxy) -> Pool:
    return proxy.app[POOL]


def follow_up(
    history: list[ChatCompletionMessageParam], answer: ChatCompletion, results: dict[str, str]
) -> list[ChatCompletionMessageParam]:
    """The history the client sends next: its answer (with the calls) and one tool message per call."""
    message = answer.choices[0].message
    assert message.tool_calls
    out: list[ChatCompletionMessageParam] = [*history, message.model_dump(exclude_none=True)]  # type: ignore[list-item]
    for call in message.tool_calls:
        assert call.type == "function"
        out.append({"role": "tool", "tool_call_id": call.id, "content": results[call.function.name]})
    return out


async def test_a_tool_call_round_trip(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Paris"}), text="Let me check."), Reply.text("Sunny, 22C."))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await proxy.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert re.fullmatch(r"[A-Za-z0-9]+", call.id)
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # The model saw the tool under its own name, with the client's schema.
    [listed] = upstream.messages_requests[0].body["tools"]
    assert listed["name"] == "get_weather"
    assert listed["input_schema"] == WEATHER["function"]["parameters"]

    second = await proxy.openai.chat.completions.create(
        model=MODEL, messages=follow_up(history, first, {"get_weather": "22C and sunny"}), tools=[WEATHER]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Sunny, 22C."
    assert second.choices[0].message.tool_calls is None
    # The same CLI turn went on: the model got the client's result for its own tool_use (a replay would carry the
    # client's call id instead), and nothing was asked twice.
    assert len(upstream.messages_requests) == 2
    [result] = tool_results(upstream.messages_requests[1])
    assert result["tool_use_id"] == "toolu_fake_1_1"
    assert result_text(result).startswith("22C and sunny")
    assert not result.get("is_error")


async def test_a_streamed_round_trip(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Oslo"}), text="One moment."), Reply.text("Cold."))
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [WEATHER],
    }
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        stream = await sse.read(response)
    assert stream.data[-1] == "[DONE]"
    assert stream.text == "One moment."
    deltas = [c["choices"][0]["delta"] for c in stream.chunks if c["choices"]]
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    # index, id, type and name first; then the arguments.
    assert tool_deltas[0]["index"] == 0
    assert tool_deltas[0]["type"] == "function"
    assert tool_deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    call_id = tool_deltas[0]["id"]
    assert re.fullmatch(r"[A-Za-z0-9]+", call_id)
    assert all("id" not in d for d in tool_deltas[1:])
    assert json.loads("".join(d["function"]["arguments"] for d in tool_deltas)) == {"city": "Oslo"}
    finishes = [c["choices"][0]["finish_reason"] for c in stream.chunks if c["choices"]]
    assert [f for f in finishes if f] == ["tool_calls"]

    # The SDK's own stream accumulator reads the same answer, and the follow-up streams the final text.
    follow: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "One moment.",
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "-3C"},
    ]
    async with proxy.openai.chat.completions.stream(model=MODEL, messages=follow, tools=[WEATHER]) as events:
        final = await events.get_final_completion()
    assert final.choices[0].message.content == "Cold."
    assert final.choices[0].finish_reason == "stop"
    assert result_text(tool_results(upstream.messages_requests[1])[0]).startswith("-3C")
    assert len(upstream.messages_requests) == 2


async def test_parallel_calls_come_back_together(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(
        calls(ToolUse("get_weather", {"city": "Rome"}), ToolUse("get_time", {"city": "Rome"})),
        Reply.text("Warm, and it is noon."),
    )
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Rome: weather and time?"}]
    first = await proxy.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME])
    assert first.choices[0].finish_reason == "tool_calls"
    tool_calls = first.choices[0].message.tool_calls or []
    assert [c.function.name for c in tool_calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert len({c.id for c in tool_calls}) == 2

    history = follow_up(history, first, {"get_weather": "28C", "get_time": "12:00"})
    second = await proxy.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME])
    assert second.choices[0].message.content == "Warm, and it is noon."
    results = tool_results(upstream.messages_requests[1])
    assert [r["tool_use_id"] for r in results] == ["toolu_fake_1_0", "toolu_fake_1_1"]
    assert [result_text(r)[:5] for r in results] == ["28C", "12:00"]


async def test_tool_choice_none_keeps_calls_away_from_the_client(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Paris"})), Reply.text("I will not look it up."))
    answer = await proxy.openai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER],
        tool_choice="none",
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content == "I will not look it up."
    first, second = upstream.messages_requests
    assert any("Do not call any tool" in t for t in first.texts())
    [refused] = tool_results(second)
    assert refused["is_error"]
    assert "tool_choice is none" in result_text(refused)


async def test_a_named_tool_choice_refuses_other_tools(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_time", {"city": "Paris"})), calls(ToolUse("get_weather", {"city": "Paris"})))
    answer = await proxy.openai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Paris?"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert [c.function.name for c in answer.choices[0].message.tool_calls or []] == ["get_weather"]  # type: ignore[union-attr]
    assert any("You must call the tool `get_weather`" in t for t in upstream.messages_requests[0].texts())
    [refused] = tool_results(upstream.messages_requests[1])
    assert refused["is_error"]
    assert "Only the tool `get_weather`" in result_text(refused)


async def test_required_tool_choice_is_asked_for(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_time", {"city": "Lima"})))
    answer = await proxy.openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Lima?"}], tools=[WEATHER, TIME], tool_choice="required"
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    assert any("You must call at least one" in t for t in upstream.messages_requests[0].texts())


async def test_parallel_tool_calls_false_hands_over_one_call(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(
        calls(ToolUse("get_weather", {"city": "Rome"}), ToolUse("get_time", {"city": "Rome"})), Reply.text("Done.")
    )
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Rome?"}]
    first = await proxy.openai.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER, TIME], parallel_tool_calls=False
    )
    assert [c.function.name for c in first.choices[0].message.tool_calls or []] == ["get_weather"]  # type: ignore[union-attr]
    assert any("at most one tool" in t for t in upstream.messages_requests[0].texts())
    await proxy.openai.chat.completions.create(
        model=MODEL, messages=follow_up(history, first, {"get_weather": "28C"}), tools=[WEATHER, TIME]
    )
    by_id = {r["tool_use_id"]: r for r in tool_results(upstream.messages_requests[1])}
    weather, time_ = by_id["toolu_fake_1_0"], by_id["toolu_fake_1_1"]
    assert result_text(weather).startswith("28C")
    assert not weather.get("is_error")
    assert time_["is_error"]
    assert "Only one tool call per answer" in result_text(time_)


async def test_wrong_tool_names_and_arguments_go_back_to_the_model(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(
        calls(ToolUse("get_wether", {"city": "Paris"})),  # no such tool: the CLI says so
        calls(ToolUse("get_weather", {"town": 5})),  # breaks the schema: maxproxy says so
        calls(ToolUse("get_weather", {"city": "Paris"})),
    )
    answer = await proxy.openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Paris?"}], tools=[WEATHER]
    )
    [call] = answer.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    _, unknown, invalid = upstream.messages_requests
    [error] = tool_results(unknown)
    assert error["is_error"]
    assert "No such tool available: get_wether" in result_text(error)
    [error] = tool_results(invalid)
    assert error["is_error"]
    assert "Invalid arguments for `get_weather`" in result_text(error)
    assert "'city' is a required property" in result_text(error)


def openclaw_tools() -> list[ChatCompletionToolParam]:
    """Twelve tools shaped like OpenClaw's (nested schemas, enums, optional fields)."""
    names = ["read", "write", "edit", "exec", "process", "web_search", "web_fetch", "browser", "message", "cron"]
    names += ["sessions_send", "memory_search"]
    out: list[ChatCompletionToolParam] = []
    for name in names:
        out.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": f"OpenClaw's {name} tool. " + "Use it carefully. " * 20,
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string", "description": "Target"},
                            "mode": {"type": "string", "enum": ["fast", "full"]},
                            "options": {
                                "type": "object",
                                "properties": {
                                    "timeout": {"type": "number"},
                                    "tags": {"type": "array", "items": {"type": "string"}},
                                },
                                "additionalProperties": False,
                            },
                        },
                        "required": ["path"],
                        "additionalProperties": False,
                    },
                },
            }
        )
    return out


async def test_an_openclaw_shaped_agent_turn(proxy: Proxy, upstream: FakeUpstream) -> None:
    tools = openclaw_tools()
    system = "You are a personal assistant running inside OpenClaw.\n" + "## Rules\n- Be helpful.\n" * 2000
    assert len(system) > 40_000
    history: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "[Tue 2026-11-24 10:00 UTC] sessionId=abc123\nWhat is in notes.md?"},
        {"role": "user", "content": [{"type": "text", "text": "<context>workspace: ~/notes</context>"}]},
    ]
    upstream.push(calls(ToolUse("read", {"path": "notes.md", "options": {"timeout": 5}}), text="Reading it."))
    body = {
        "model": MODEL,
        "messages": history,
        "tools": tools,
        "tool_choice": "auto",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 8192,
    }
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        stream = await sse.read(response)
    assert stream.data[-1] == "[DONE]"
    *chunks, usage = stream.chunks
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] > 0
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["tool_calls"]
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert deltas[0]["function"]["name"] == "read"
    assert json.loads(deltas[1]["function"]["arguments"]) == {"path": "notes.md", "options": {"timeout": 5}}

    # All twelve tools reached the model as they are, and so did the whole system prompt.
    received = upstream.messages_requests[0]
    listed = {t["name"]: t for t in received.body["tools"]}
    assert set(listed) == {t["function"]["name"] for t in tools}
    for tool in tools:
        assert listed[tool["function"]["name"]]["input_schema"] == tool["function"]["parameters"]
        assert listed[tool["function"]["name"]]["description"] == tool["function"]["description"]
    assert any(system in t for t in received.texts())
    assert received.body["max_tokens"] == 8192

    # OpenClaw's follow-up: its own history, the call (id kept), the tool's result.
    call_id = deltas[0]["id"]
    history += [
        {
            "role": "assistant",
            "content": "Reading it.",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "read", "arguments": deltas[1]["function"]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "# Notes\n- buy milk"},
    ]
    upstream.push(Reply.text("Your notes say: buy milk."))
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json={**body, "messages": history}) as response:
        stream = await sse.read(response)
    assert stream.text == "Your notes say: buy milk."
    assert result_text(tool_results(upstream.messages_requests[1])[0]).startswith("# Notes\n- buy milk")


async def test_a_follow_up_after_a_restart_replays_the_calls(
    cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    first = await start_proxy()
    upstream.push(calls(ToolUse("get_weather", {"city": "Kyiv"}), text="Checking."))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Kyiv?"}]
    answer = await first.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    await first.server.close()  # maxproxy stops while the turn waits; its workers go with it

    second = await start_proxy()
    upstream.push(Reply.text("Snowing in Kyiv."))
    history = follow_up(history, answer, {"get_weather": "-5C, snow"})
    final = await second.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert final.choices[0].message.content == "Snowing in Kyiv."
    # The new process got the conversation replayed: the call and its result as real tool blocks.
    replayed = upstream.messages_requests[-1].messages
    [call] = answer.choices[0].message.tool_calls or []
    tool_use = next(b for m in replayed if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use")
    assert tool_use == {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Kyiv"}}
    [result] = tool_results(upstream.messages_requests[-1])
    assert result["tool_use_id"] == call.id
    assert result_text(result).startswith("-5C, snow")


async def test_a_follow_up_that_never_comes_frees_the_worker(
    cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(tool_wait=1.0)
    pool = pool_of(proxy)
    upstream.push(calls(ToolUse("get_weather", {"city": "Lima"})))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Lima?"}]
    answer = await proxy.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    [waiting] = [w for w in holding(pool) if w.waiting]
    await wait_for(lambda: any(h.worker is waiting and h.state is WorkerState.IDLE for h in pool.workers()), timeout=15)
    assert waiting.alive
    assert not waiting.in_turn
    assert not holding(pool)

    # A late follow-up still gets its answer: the conversation is replayed.
    upstream.push(Reply.text("Mild in Lima."))
    late = await proxy.openai.chat.completions.create(
        model=MODEL, messages=follow_up(history, answer, {"get_weather": "19C"}), tools=[WEATHER]
    )
    assert late.choices[0].message.content == "Mild in Lima."
    [result] = tool_results(upstream.messages_requests[-1])
    assert result["tool_use_id"] == (answer.choices[0].message.tool_calls or [])[0].id


async def test_tool_results_followed_by_a_user_message(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Bern"})), Reply.text("8C, in Celsius."))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Bern?"}]
    first = await proxy.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    history = [*follow_up(history, first, {"get_weather": "8C"}), {"role": "user", "content": "In Celsius, please."}]
    second = await proxy.openai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "8C, in Celsius."
    # One model call more, in the same turn: the result and the message together.
    assert len(upstream.messages_requests) == 2
    [result] = tool_results(upstream.messages_requests[1])
    assert "8C" in result_text(result)
    assert "In Celsius, please." in json.dumps(upstream.messages_requests[1].messages[-1])


async def test_each_request_lists_its_own_tools(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.text("a"), Reply.text("b"), Reply.text("c"))
    await proxy.openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "1"}], tools=[WEATHER]
    )
    await wait_for(lambda: pool_of(proxy).busy == 0)
    await proxy.openai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "2"}], tools=[TIME])
    await wait_for(lambda: pool_of(proxy).busy == 0)
    await proxy.openai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "3"}])
    names = [[t["name"] for t in r.body.get("tools", [])] for r in upstream.messages_requests]
    assert names == [["get_weather"], ["get_time"], []]


async def test_bad_tool_definitions_are_400s(proxy: Proxy) -> None:
    user = [{"role": "user", "content": "hi"}]
    call = {"id": "call1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "messages": [*user, {"role": "tool", "tool_call_id": "call9", "content": "x"}]},
            "messages[1].tool_call_id",
        ),
        (
            {"tools": [WEATHER], "messages": [*user, {"role": "assistant", "tool_calls": [call]}, *user]},
            "messages[1].tool_calls",
        ),
    ]
    for extra, param in cases:
        body = {"model": MODEL, "messages": user, **extra}
        async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body) as response:
            error = (await response.json())["error"]
            assert response.status == 400, (extra, error)
            assert (error["type"], error["param"]) == ("invalid_request_error", param), extra
