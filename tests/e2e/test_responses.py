"""The OpenAI Responses API through the real CLI, read by the `openai` SDK: plain and streamed answers (and the SDK's
stream helper), `instructions`, the output limit as `incomplete`, a function-tool round trip that goes on with the
waiting CLI turn (also when the client rewrites the call ids, as OpenClaw does), and bad input as OpenAI's 400s with
the Responses field named."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from maxproxy.bench.upstream import FakeUpstream, Reply, Text, Thinking, ToolUse
from openai.types.responses import FunctionToolParam

from tests.conftest import Proxy
from tests.e2e.test_tools import calls, result_text, tool_results

MODEL = "claude-sonnet-4"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


async def test_a_plain_answer(proxy: Proxy, upstream: FakeUpstream) -> None:
    response = await proxy.openai.responses.create(model=MODEL, input="hi", instructions="Answer like a pirate.")
    assert response.status == "completed"
    assert response.output_text == "Hello from fake upstream!"
    assert response.id.startswith("resp_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (10, 4)
    assert response.usage.total_tokens == 14
    [sent] = upstream.messages_requests
    assert any("Answer like a pirate." in text for text in sent.texts())  # the instructions reached the model


async def test_a_streamed_answer_in_the_order_the_sdk_needs(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("one two three", pieces=3)
    stream = await proxy.openai.responses.create(model=MODEL, input="count", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "one two three"

    async with proxy.openai.responses.stream(model=MODEL, input="again") as helper:
        final = await helper.get_final_response()
    assert final.output_text == "one two three"


async def test_the_output_limit_is_incomplete(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.text("cut here", stop_reason="max_tokens")
    response = await proxy.openai.responses.create(model=MODEL, input="long story", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "cut here"
    assert upstream.messages_requests[0].body["max_tokens"] == 16


@pytest.mark.parametrize("rewrite", [False, True])
async def test_a_function_call_round_trip_goes_on_with_the_waiting_turn(
    proxy: Proxy, upstream: FakeUpstream, rewrite: bool
) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Paris"})), Reply.text("Sunny, 22C."))
    first = await proxy.openai.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    [listed] = upstream.messages_requests[0].body["tools"]
    assert (listed["name"], listed["input_schema"]) == ("get_weather", WEATHER["parameters"])

    # OpenClaw sends the ids back rewritten (`call_<id>_fc_<id>_<hex>`): outputs pair with the calls it sent.
    call_id = f"call_{call.call_id}_fc_{call.call_id}_028de33e26" if rewrite else call.call_id
    follow: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call_id, "output": "22C and sunny"},
    ]
    second = await proxy.openai.responses.create(model=MODEL, input=follow, tools=[WEATHER])
    assert second.output_text == "Sunny, 22C."
    # The same CLI turn went on: the result arrived under the model's own tool_use id, nothing was asked twice.
    assert len(upstream.messages_requests) == 2
    [result] = tool_results(upstream.messages_requests[1])
    assert result["tool_use_id"] == "toolu_fake_1_0"
    assert result_text(result).startswith("22C and sunny")


async def test_a_streamed_function_call(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(calls(ToolUse("get_weather", {"city": "Oslo"}), text="One moment."))
    stream = await proxy.openai.responses.create(model=MODEL, input="Oslo?", tools=[WEATHER], stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.done" in kinds
    completed = events[-1]
    assert completed.type == "response.completed"
    assert [item.type for item in completed.response.output] == ["message", "function_call"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "gpt-nope", "input": "hi"}, 404, "model"),
        ({"model": MODEL, "input": "hi", "tools": [{"type": "file_search", "vector_store_ids": []}]}, 400, "tools[0]"),
        ({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]}, 400, None),
        ({"model": MODEL, "input": "hi", "max_output_tokens": 10**30}, 400, "max_output_tokens"),
        ({"model": MODEL, "input": "hi", "previous_response_id": "resp_x"}, 404, "previous_response_id"),
        ({"model": MODEL}, 400, None),
    ],
)
async def test_bad_input_is_openais_error(
    proxy: Proxy, upstream: FakeUpstream, body: dict[str, Any], status: int, param: str | None
) -> None:
    for stream in (False, True):
        async with proxy.http.post(f"{proxy.url}/v1/responses", json={**body, "stream": stream}) as response:
            assert response.status == status, await response.text()
            error = (await response.json())["error"]
        assert error["type"] in ("invalid_request_error",)
        if param is not None:
            assert (error["param"] or "").startswith(param), error
    assert not upstream.messages_requests


async def test_the_sdk_raises_on_an_upstream_error(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply.error(529)
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.openai.responses.create(model=MODEL, input="hi")
    assert caught.value.status_code == 529


async def test_usage_and_metrics_count_a_response_as_they_count_a_chat(proxy: Proxy) -> None:
    await proxy.openai.responses.create(model=MODEL, input="hi")
    await proxy.openai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    async with proxy.http.get(f"{proxy.url}/v1/usage") as response:
        totals = (await response.json())["totals"]
    assert (totals["requests"], totals["output_tokens"]) == (2, 8)
    async with proxy.http.get(f"{proxy.url}/metrics") as response:
        text = await response.text()
    [line] = [line for line in text.splitlines() if line.startswith("maxproxy_requests_total{")]
    assert line.endswith(" 2.0")  # both requests, one series (model, key, status)


async def test_thinking_comes_as_a_reasoning_summary(proxy: Proxy, upstream: FakeUpstream) -> None:
    thought = Reply(blocks=(Thinking("pondering deeply"), Text(("The ", "answer."))))
    upstream.push(thought, thought)
    response = await proxy.openai.responses.create(model=MODEL, input="why?", reasoning={"summary": "auto"})
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert "".join(part.text for part in reasoning.summary) == "pondering deeply"
    assert response.output_text == "The answer."
    async with proxy.openai.responses.stream(model=MODEL, input="why?") as helper:
        kinds = [event.type async for event in helper]
        final = await helper.get_final_response()
    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index("response.output_text.delta")
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "The answer."


async def test_an_input_image_and_developer_messages_reach_the_model(proxy: Proxy, upstream: FakeUpstream) -> None:
    from tests.test_prompt import PNG

    response = await proxy.openai.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "DEVELOPER-MARKER: be brief."},  # how Codex sends its prompt
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
                ],
            },
        ],
    )
    assert response.status == "completed"
    [call] = upstream.messages_requests
    blocks = call.messages[0]["content"]
    images = [b for b in blocks if b["type"] == "image"]
    assert images == [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]
    assert any("What is this?" in text for text in call.texts())
    assert any("DEVELOPER-MARKER" in text for text in [*call.texts(), call.system_text()])
