"""Upstream throttling that is not the plan's limit: a server-side 429 or a 529 answers the one request it hit, with
its status and a short `Retry-After`, and the next request, for any model, goes to the upstream again. The plan's own
limit still opens the subscription breaker (tests/e2e/test_keys.py)."""

from __future__ import annotations

from typing import Any

from maxproxy.bench.upstream import FakeUpstream, Reply

from tests.conftest import Proxy
from tests.e2e import CHAT


async def ask(proxy: Proxy, model: str) -> tuple[int, dict[str, str], Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with proxy.http.post(proxy.url + CHAT, json=body) as response:
        return response.status, dict(response.headers), await response.json()


async def test_a_server_side_429_blocks_nothing_after_it(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.error(429, "Rate limited", headers={"retry-after": "2"}))
    status, headers, body = await ask(proxy, "claude-sonnet-4")
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "not your usage limit" in body["error"]["message"]
    assert 1 <= int(headers["Retry-After"]) <= 5
    async with proxy.http.get(proxy.url + "/health") as response:
        assert (await response.json())["breaker"] == []
    for model in ("claude-sonnet-4", "claude-opus-4", "claude-haiku-4"):
        calls = len(upstream.messages_requests)
        status, _, body = await ask(proxy, model)
        assert status == 200, body
        assert len(upstream.messages_requests) == calls + 1  # it reached the upstream


async def test_a_529_is_a_529_with_retry_after(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply.error(529, "Overloaded", headers={"retry-after": "2"}))
    status, headers, body = await ask(proxy, "claude-sonnet-4")
    assert status == 529
    assert (body["error"]["type"], body["error"]["code"]) == ("overloaded_error", "upstream_overloaded")
    assert 1 <= int(headers["Retry-After"]) <= 5
    calls = len(upstream.messages_requests)
    status, _, _ = await ask(proxy, "claude-opus-4")
    assert status == 200
    assert len(upstream.messages_requests) == calls + 1
