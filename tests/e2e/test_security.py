"""Safe by default: API keys, browser origins, no secrets or prompts in the logs; and the `maxproxy` command itself
(JSON logs on stdout, SIGTERM → exit 0 with no CLI left)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
from maxproxy.bench.daemon import daemon, processes_in
from maxproxy.bench.upstream import FakeUpstream

from tests.conftest import ProxyFactory
from tests.e2e import CHAT, HELLO


async def test_api_keys_are_required_when_configured(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(api_keys=["key-one", "key-two"])
    body = {"model": "claude-sonnet-4", "messages": HELLO}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic key-one"},
        {"Authorization": "Bearer key-one-and-more"},
    ):
        async with proxy.http.post(proxy.url + CHAT, json=body, headers=headers) as response:
            assert response.status == 401
            error = (await response.json())["error"]
            assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    async with proxy.http.get(proxy.url + "/v1/models") as response:
        assert response.status == 401
    async with proxy.http.post(proxy.url + CHAT, json=body, headers={"Authorization": "Bearer key-two"}) as response:
        assert response.status == 200
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 200  # liveness needs no key
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)  # SDK sends key-one
    assert answer.choices[0].message.content


async def test_browser_origins_are_refused_unless_allowed(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(cors_origins=["http://localhost:5173"])
    body = {"model": "claude-sonnet-4", "messages": HELLO}
    async with proxy.http.post(proxy.url + CHAT, json=body, headers={"Origin": "https://evil.example"}) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in response.headers
    async with proxy.http.options(
        proxy.url + CHAT, headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"}
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    async with proxy.http.post(proxy.url + CHAT, json=body, headers={"Origin": "http://localhost:5173"}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    async with proxy.http.get(proxy.url + "/v1/models", headers={"Origin": "http://localhost:5173"}) as response:
        assert response.headers["Access-Control-Allow-Origin"] != "*"


async def test_dns_rebinding_host_is_refused_on_a_loopback_bind(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy()
    for host, status in (("evil.example:3456", 403), ("localhost:3456", 200), ("127.0.0.1", 200), ("[::1]:1", 200)):
        async with proxy.http.get(proxy.url + "/v1/models", headers={"Host": host}) as response:
            assert response.status == status, host
            if status == 403:
                assert (await response.json())["error"]["code"] == "host_not_allowed"


async def test_no_origin_allow_list_means_no_browser_access(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy()
    async with proxy.http.get(proxy.url + "/v1/models", headers={"Origin": "http://localhost:3000"}) as response:
        assert response.status == 403


async def test_the_command_serves_logs_json_and_stops_cleanly(
    cli_env: Path, upstream: FakeUpstream, tmp_path: Path
) -> None:
    state = tmp_path / "daemon-state"
    env = {
        **os.environ,
        "MAXPROXY_API_KEYS": "sk-very-secret-0123",
        "MAXPROXY_STATE_DIR": str(state),
        "MAXPROXY_LOG_FORMAT": "json",
        "MAXPROXY_UPSTREAM_RETRIES": "0",
    }
    prompt = "PROMPT-TEXT-must-not-be-logged"
    async with daemon(env) as (proc, url, records):
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url + CHAT,
                json={"model": "claude-sonnet-4", "messages": [{"role": "user", "content": prompt}]},
                headers={"Authorization": "Bearer sk-very-secret-0123", "x-request-id": "trace-42"},
            ) as response:
                assert response.status == 200
                assert response.headers["x-request-id"] == "trace-42"
            async with http.get(url + "/v1/models", headers={"Authorization": "Bearer sk-wrong"}) as response:
                assert response.status == 401
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    output = json.dumps(records)
    events = [r["event"] for r in records]
    assert "cli_ready" in events
    assert "stopped" in events
    [access] = [r for r in records if r["event"] == "request" and r.get("path") == CHAT]
    assert access["request_id"] == "trace-42"
    assert (access["status"], access["model"], access["stream"]) == (200, "claude-sonnet-4", False)
    assert access["completion_tokens"] == 4
    assert access["duration_ms"] > 0
    assert "sk-very-secret-0123" not in output
    assert "sk-wrong" not in output
    assert prompt not in output
    assert not processes_in(state), "a CLI worker outlived the daemon"
