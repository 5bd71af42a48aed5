"""The error battery: client mistakes are OpenAI-shaped 4xx, upstream and CLI failures map to statuses the SDKs
understand, and no error ever comes back as assistant content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from maxproxy.bench.upstream import FakeUpstream, Reply, Text

from tests import sse
from tests.conftest import Proxy, ProxyFactory
from tests.e2e import CHAT, HELLO


async def error_of(proxy: Proxy, method: str, path: str, status: int, **kw: Any) -> dict[str, Any]:
    async with proxy.http.request(method, proxy.url + path, **kw) as response:
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'"a string"', None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', None),
        (b'{"model": "claude-sonnet-4", "messages": []}', "messages"),
        (b'{"model": "claude-sonnet-4", "messages": "hi"}', "messages"),
        (b'{"model": "claude-sonnet-4", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        (
            b'{"model": "claude-sonnet-4", "messages": [{"role": "user", "content": [{"type": "video"}]}]}',
            "messages[0].content[0].type",
        ),
        (
            b'{"model": "claude-sonnet-4", "messages": [{"role": "user", "content": [{"type": "image_url", '
            b'"image_url": {"url": "http://127.0.0.1/cat.png"}}]}]}',
            "messages[0].content[0].image_url",
        ),
        (b'{"model": "claude-sonnet-4", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}', "stream"),
        (b'{"model": "claude-sonnet-4", "n": 3, "messages": [{"role": "user", "content": "x"}]}', "n"),
    ],
)
async def test_bad_requests_are_400(proxy: Proxy, body: bytes, param: str | None) -> None:
    error = await error_of(proxy, "POST", CHAT, 400, data=body, headers={"Content-Type": "application/json"})
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_unknown_model_is_404_model_not_found(proxy: Proxy, upstream: FakeUpstream) -> None:
    error = await error_of(proxy, "POST", CHAT, 404, json={"model": "gpt-4o", "messages": HELLO})
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    await error_of(proxy, "GET", "/v1/models/gpt-4o", 404)
    assert upstream.requests == []
    with pytest.raises(openai.NotFoundError):
        await proxy.openai.chat.completions.create(model="claude-5-turbo", messages=HELLO)


async def test_aiohttp_errors_are_openai_shaped(proxy: Proxy) -> None:
    assert (await error_of(proxy, "GET", "/v2/nothing", 404))["code"] == "not_found"
    assert (await error_of(proxy, "PUT", CHAT, 405))["code"] == "method_not_allowed"


async def test_body_over_the_limit_is_413(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(body_limit=4096)
    big = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert (await error_of(proxy, "POST", CHAT, 413, json=big))["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("reply", "status", "code", "sdk_error"),
    [
        (Reply.error(401, "invalid x-api-key"), 502, "cli_authentication_failed", openai.InternalServerError),
        (
            Reply.error(429, "slow down", headers={"retry-after": "7"}),
            429,
            "rate_limit_exceeded",
            openai.RateLimitError,
        ),
        (Reply.error(500, "boom"), 502, "upstream_error", openai.InternalServerError),
        (Reply.error(529, "Overloaded"), 529, "upstream_overloaded", openai.InternalServerError),
        (
            Reply.error(400, "prompt is too long: 250000 tokens > 200000 maximum"),
            400,
            "context_length_exceeded",
            openai.BadRequestError,
        ),
    ],
)
async def test_upstream_errors_map_to_statuses(
    proxy: Proxy, upstream: FakeUpstream, reply: Reply, status: int, code: str, sdk_error: type[Exception]
) -> None:
    upstream.default = reply
    error = await error_of(proxy, "POST", CHAT, status, json={"model": "claude-sonnet-4", "messages": HELLO})
    assert error["code"] == code
    # Streaming requests get the same real status: no token had been sent when the error came.
    async with proxy.http.post(
        proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}
    ) as response:
        assert response.status == status
        if status == 429:
            assert int(response.headers["Retry-After"]) >= 1
    with pytest.raises(sdk_error):
        await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)


async def test_error_after_tokens_is_an_error_event_then_done(proxy: Proxy, upstream: FakeUpstream) -> None:
    # The stream breaks after two deltas, and the CLI's non-streaming fallback fails too.
    upstream.push(Reply(blocks=(Text(("one ", "two ", "three ", "four")),), drop_after_deltas=2), Reply.error(500))
    async with proxy.http.post(
        proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}
    ) as response:
        assert response.status == 200
        stream = await sse.read(response)
    assert stream.text == "one two "
    assert stream.data[-1] == "[DONE]"
    final = stream.chunks[-1]
    assert set(final) == {"error"}
    assert final["error"]["type"] == "upstream_error"
    assert all(c["choices"][0]["finish_reason"] is None for c in stream.chunks[:-1])


async def test_broken_stream_recovered_by_the_cli_fallback_is_seamless(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.default = Reply(blocks=(Text(("one ", "two ", "three ", "four")),), drop_after_deltas=2)
    async with proxy.http.post(
        proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}
    ) as response:
        stream = await sse.read(response)
    assert stream.text == "one two three four"
    assert stream.chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [r.body["stream"] for r in upstream.requests] == [True, False]


async def test_sdk_raises_on_an_error_event(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.push(Reply(blocks=(Text(("one ", "two ", "three")),), drop_after_deltas=1), Reply.error(500))
    stream = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_inactivity_watchdog_gives_504(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(inactivity_timeout=1.5, upstream_timeout=60)
    upstream.default = Reply(hang_before_headers=True)
    error = await error_of(proxy, "POST", CHAT, 504, json={"model": "claude-sonnet-4", "messages": HELLO})
    assert error["code"] == "cli_inactivity_timeout"


async def test_stream_keepalives_then_watchdog_error_event(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(inactivity_timeout=2.5, keepalive_interval=0.4, upstream_idle_timeout=60)
    upstream.default = Reply(blocks=(Text(("first ", "never")),), hang_after_deltas=1)
    async with proxy.http.post(
        proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}
    ) as response:
        assert response.status == 200
        stream = await sse.read(response)
    assert stream.text == "first "
    assert stream.comments  # keepalive comments flowed while the CLI was silent
    assert stream.chunks[-1]["error"]["code"] == "cli_inactivity_timeout"
    assert stream.data[-1] == "[DONE]"


async def test_hard_cap_stops_a_turn(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(max_turn_seconds=1.5)
    upstream.default = Reply.text("slow " * 100, pieces=100, delay=0.05)
    error = await error_of(proxy, "POST", CHAT, 504, json={"model": "claude-sonnet-4", "messages": HELLO})
    assert error["code"] == "turn_timeout"


async def test_silent_header_hang_sends_the_stream_headers_on_time(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """While the upstream is silent, the stream opens at the keepalive tick so clients with idle timeouts wait."""
    proxy = await start_proxy(inactivity_timeout=2.0, keepalive_interval=0.3, upstream_timeout=60)
    upstream.default = Reply(hang_before_headers=True)
    async with proxy.http.post(
        proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO, "stream": True}
    ) as response:
        assert response.status == 200
        stream = await sse.read(response)
    assert stream.chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert stream.chunks[-1]["error"]["type"] == "timeout_error"
