"""A warm worker serves one request after another, from different API keys and with different tools: the upstream
sees exactly the tools of the request it serves (name, description, schema), never a tool of an earlier request.
The CLI keeps every tool it has sent upstream for the rest of its session (measured: `tools/list_changed` only adds),
so this holds only because maxproxy gives the CLI a fresh tool server whenever the listing changes."""

from __future__ import annotations

import json
from typing import Any

from maxproxy.bench.upstream import FakeUpstream, Received, Reply, ToolUse
from maxproxy.state import POOL
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests import sse
from tests.conftest import ProxyFactory, wait_for
from tests.e2e.test_tools import MODEL, TIME, WEATHER, calls, follow_up, function, result_text, tool_results

STOCK = function("get_stock", "Share price of a company", ticker="string")
KEYS = ["sk-tools-one-0001", "sk-tools-two-0002"]


def listed(received: Received) -> dict[str, tuple[str, Any]]:
    """The tools one upstream request carried, by name."""
    return {t["name"]: (t.get("description", ""), t["input_schema"]) for t in received.body.get("tools", [])}


def expected(tools: list[ChatCompletionToolParam]) -> dict[str, tuple[str, Any]]:
    return {t["function"]["name"]: (t["function"]["description"], t["function"]["parameters"]) for t in tools}


async def test_each_request_on_a_reused_worker_sees_only_its_own_tools(
    cli_env: object, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    # One process serves every request: each unrelated conversation empties the one before it.
    proxy = await start_proxy(max_workers=1, min_idle=1, api_keys=KEYS)
    pool = proxy.app[POOL]
    seen = 0

    async def ask(key: str, text: str, tools: list[ChatCompletionToolParam], *, stream: bool) -> str:
        nonlocal seen
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream}
        if tools:
            body["tools"] = tools
        upstream.push(Reply.text(f"answer to {text}"))
        headers = {"Authorization": f"Bearer {key}"}
        async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            answer = (await sse.read(response)).text if stream else (await response.json())["choices"][0]["message"]
        await wait_for(lambda: pool.busy == 0)
        [received] = upstream.messages_requests[seen:]
        seen += 1
        assert listed(received) == expected(tools), f"request {text!r} ({'stream' if stream else 'json'})"
        return answer if isinstance(answer, str) else answer["content"]

    assert await ask(KEYS[0], "weather and time?", [WEATHER, TIME], stream=False) == "answer to weather and time?"
    await ask(KEYS[1], "no tools here", [], stream=False)
    await ask(KEYS[0], "stocks?", [STOCK], stream=True)
    await ask(KEYS[1], "still no tools", [], stream=True)
    await ask(KEYS[1], "weather again", [WEATHER, TIME], stream=True)
    await ask(KEYS[0], "nothing", [], stream=False)

    # A tool of a listing that replaced another is still called and answered through the waiting turn.
    upstream.push(calls(ToolUse("get_stock", {"ticker": "ACME"})), Reply.text("ACME is at 12."))
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ACME?"}]
    client = proxy.openai.with_options(api_key=KEYS[1])
    first = await client.chat.completions.create(model=MODEL, messages=history, tools=[STOCK])
    assert first.choices[0].finish_reason == "tool_calls"
    second = await client.chat.completions.create(
        model=MODEL, messages=follow_up(history, first, {"get_stock": "12 USD"}), tools=[STOCK]
    )
    assert second.choices[0].message.content == "ACME is at 12."
    [result] = tool_results(upstream.messages_requests[-1])
    assert result_text(result).startswith("12 USD")
    assert not result.get("is_error")
    assert [listed(r) for r in upstream.messages_requests[seen:]] == [expected([STOCK])] * 2
    seen += 2
    await wait_for(lambda: pool.busy == 0)
    await ask(KEYS[0], "and now none", [], stream=True)

    # Every request was served by the same CLI process (its session id survives the rewinds between requests).
    assert pool.counts["spawned"] == 1
    sessions = {r.headers.get("X-Claude-Code-Session-Id") for r in upstream.messages_requests}
    assert len(sessions) == 1, json.dumps(sorted(map(str, sessions)))
