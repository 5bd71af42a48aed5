"""Every policy of the turn core applies to a Responses request exactly as to a chat one: the key's models, its
request rate with OpenAI's rate-limit headers, its token budget, the plan breaker (opened by either protocol, closing
both), unknown models, and the usage rows under the key — each case asked through both protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from maxproxy.bench.upstream import FakeUpstream, Reply, plan_limit

from tests.conftest import Proxy, ProxyFactory
from tests.e2e.test_keys import keyed

MODEL = "claude-sonnet-4"
PROTOCOLS = ["chat", "responses"]


async def ask(
    proxy: Proxy, protocol: str, key: str = "x", *, model: str = MODEL, stream: bool = False
) -> tuple[int, dict[str, str], Any]:
    body: dict[str, Any]  # a chat body or a Responses one
    if protocol == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    else:
        path, body = "/v1/responses", {"input": "hi"}
    headers = {"Authorization": f"Bearer {key}"}
    async with proxy.http.post(
        f"{proxy.url}{path}", json={"model": model, "stream": stream, **body}, headers=headers
    ) as response:
        data: Any = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, dict(response.headers), data


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_keys_models_rate_and_budget(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream, protocol: str
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    status, _, body = await ask(proxy, protocol, "sk-bob-000002")  # bob may use haiku only
    assert (status, body["error"]["code"], body["error"]["param"]) == (403, "model_not_allowed", "model")
    assert (await ask(proxy, protocol, "sk-bob-000002", model="claude-haiku-4"))[0] == 200

    _, first, _ = await ask(proxy, protocol, "sk-alice-0001")  # alice: 2 requests a minute
    assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == ("2", "1")
    await ask(proxy, protocol, "sk-alice-0001", stream=True)
    status, headers, body = await ask(proxy, protocol, "sk-alice-0001")
    assert (status, body["error"]["type"], body["error"]["code"]) == (429, "rate_limit_error", "key_rate_limit")
    assert 1 <= int(headers["Retry-After"]) <= 60

    dave = "sk-dave-00004"  # 50 tokens a day; each answer uses 14
    statuses = [(await ask(proxy, protocol, dave))[0] for _ in range(5)]
    assert statuses[:4] == [200] * 4
    assert statuses[4] == 429

    async with proxy.http.get(f"{proxy.url}/v1/usage", headers={"Authorization": "Bearer sk-ops-000005"}) as response:
        rows = (await response.json())["data"]
    requests = {row["key"]: row["requests"] for row in rows}
    assert requests == {"bob": 1, "alice": 2, "dave": 4}


@pytest.mark.parametrize("opened_by", PROTOCOLS)
async def test_a_plan_limit_on_either_protocol_stops_both(proxy: Proxy, upstream: FakeUpstream, opened_by: str) -> None:
    upstream.push(Reply.error(429, "rate limited", headers=plan_limit(120)))
    status, _, _ = await ask(proxy, opened_by)
    assert status == 429
    calls = len(upstream.messages_requests)
    for protocol in PROTOCOLS:
        for stream in (False, True):
            status, headers, body = await ask(proxy, protocol, stream=stream)
            assert (status, body["error"]["code"]) == (429, "subscription_limit"), body
            assert 100 <= int(headers["Retry-After"]) <= 120
    assert len(upstream.messages_requests) == calls  # none reached the upstream


async def test_an_unknown_model_is_404_on_both(proxy: Proxy, upstream: FakeUpstream) -> None:
    for protocol in PROTOCOLS:
        status, _, body = await ask(proxy, protocol, model="gpt-9")
        assert (status, body["error"]["code"], body["error"]["param"]) == (404, "model_not_found", "model")
    assert not upstream.messages_requests
