"""The plan's state through maxproxy with the real CLI: the plan's rate-limit headers on an upstream answer reach
`/v1/usage`, `/health`, `/metrics` and the notifier (once); `/v1/status` has each key's usage, the last requests and
the workers; it and the plan's refresh need an admin key; the refresh with no worker between turns is a 503; under a
stored login the plan's usage endpoint is asked at start and on demand."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from maxproxy.bench.upstream import FakeUpstream, Reply, plan_headers, usage_body
from maxproxy.state import PLAN, POOL

from tests.conftest import STORED_TOKEN, Proxy, ProxyFactory, wait_for
from tests.fakes.telegram import TOKEN, FakeTelegram

MODEL = "claude-sonnet-4"
KEYS = """
[keys.bot-a]
key = "sk-bot-a-0001"

[keys.bot-b]
key = "sk-bot-b-0002"

[keys.ops]
key = "sk-ops-000003"
admin = true
"""
A, B, OPS = ({"Authorization": f"Bearer {k}"} for k in ("sk-bot-a-0001", "sk-bot-b-0002", "sk-ops-000003"))


async def chat(proxy: Proxy, headers: dict[str, str] | None = None, text: str = "hi") -> tuple[int, str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers or {}) as response:
        await response.read()
        return response.status, response.headers["x-request-id"]


async def get(proxy: Proxy, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with proxy.http.get(f"{proxy.url}{path}", headers=headers or {}) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_plan_headers_reach_usage_health_metrics_and_the_notifier_once(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, telegram: FakeTelegram
) -> None:
    proxy = await start_proxy(
        telegram_bot_token=TOKEN, telegram_notify_ids=["42"], telegram_api_base=telegram.url, max_workers=2
    )
    status, body = await get(proxy, "/v1/usage")
    assert status == 200
    assert body["plan"]["windows"] == []
    upstream.push(Reply.text("one", headers=plan_headers(0.97)))
    upstream.push(Reply.text("two", headers=plan_headers(0.98, overage_in_use=True)))
    assert (await chat(proxy))[0] == 200
    assert (await chat(proxy))[0] == 200

    status, body = await get(proxy, "/v1/usage")
    windows = {w["name"]: w for w in body["plan"]["windows"]}
    assert windows["five_hour"]["utilization"] == 0.98
    assert windows["five_hour"]["status"] == "allowed_warning"
    assert windows["seven_day"]["utilization"] == 0.41
    assert windows["five_hour"]["resets_at"] > time.time()
    assert body["plan"]["overage"]["in_use"] is True
    assert any(w.startswith("five_hour at 98% (warn at 95%)") for w in body["plan"]["warnings"])

    status, health = await get(proxy, "/health")
    assert health["plan"] == "five_hour 98%, seven_day 41%, extra usage in use"
    assert health["workers"]["total"] >= 1

    status, metrics = await get(proxy, "/metrics")
    assert 'maxproxy_plan_utilization{window="five_hour"} 0.98' in metrics
    assert 'maxproxy_plan_utilization{window="seven_day"} 0.41' in metrics
    assert "maxproxy_plan_extra_usage_in_use 1.0" in metrics

    # 97% then 98%: one warning for the 95% threshold (not one per answer), and one for extra usage.
    await wait_for(lambda: any("extra usage is being used" in t for t in telegram.texts("sendMessage")))
    warned = [t for t in telegram.texts("sendMessage") if "five_hour window is at" in t]
    assert len(warned) == 1
    assert "97% (warning at 95%)" in warned[0]


async def test_the_status_has_each_keys_usage_the_last_requests_and_the_workers(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    proxy = await start_proxy(keys_file=str(keys), max_workers=2)
    status_a, request_a = await chat(proxy, A)
    status_b, request_b = await chat(proxy, B, "hello there")
    assert (status_a, status_b) == (200, 200)
    status_refused, refused = await chat(proxy, {"Authorization": "Bearer sk-wrong"})
    assert status_refused == 401

    assert (await get(proxy, "/v1/status"))[0] == 401
    status, body = await get(proxy, "/v1/status", A)
    assert status == 403
    assert body["error"]["message"] == "The status needs an admin key"
    status, body = await get(proxy, "/v1/status", OPS)
    assert status == 200

    assert [(r["request_id"], r["key"], r["protocol"], r["status"]) for r in body["recent"]] == [
        (refused, None, "chat", 401),  # no key known: not counted as anyone's
        (request_b, "bot-b", "chat", 200),
        (request_a, "bot-a", "chat", 200),
    ]
    assert all(r["input_tokens"] and r["output_tokens"] and r["duration_ms"] > 0 for r in body["recent"][1:])
    rows = {row["name"]: row for row in body["keys"]}
    assert set(rows) == {"bot-a", "bot-b"}
    for row in rows.values():
        assert row["today"]["requests"] == row["week"]["requests"] == 1
        assert len(row["hours"]) == 24
        assert row["hours"][-1]["requests"] == 1
        assert row["hours"][-1]["hour"] == int(time.time()) // 3600 * 3600
        assert sum(h["tokens"] for h in row["hours"]) == row["today"]["total_tokens"] > 0
    _, health = await get(proxy, "/health")
    assert body["workers"]["total"] == health["workers"]["total"]
    assert sum(body["workers"]["states"].values()) >= body["workers"]["total"]
    assert body["workers"]["max"] == 2
    assert {f["family"] for f in body["families"]} >= {"sonnet"}
    assert body["cli"]["version"] == body["cli"]["pinned_version"]
    assert body["problems"] == []
    # No prompt or answer text anywhere in it.
    assert "hello there" not in str(body)
    assert "Hello from fake upstream" not in str(body)


async def test_the_plans_refresh_needs_an_admin_key_and_a_worker_between_turns(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(KEYS)
    proxy = await start_proxy(keys_file=str(keys), max_workers=1, min_idle=1)
    url = f"{proxy.url}/v1/usage/plan/refresh"
    async with proxy.http.post(url, headers=A) as response:
        assert response.status == 403
    await wait_for(lambda: proxy.app[POOL].idle == 1, timeout=30)
    async with proxy.http.post(url, headers=OPS) as response:
        body = await response.json()
        assert response.status == 200, body
    # This login (CLAUDE_CODE_OAUTH_TOKEN) cannot read the plan's usage endpoint: the CLI says so without a request.
    assert body["plan"]["limits_available"] is False
    assert upstream.requests == []

    # The one worker is in a turn: nobody to ask now.
    upstream.push(Reply.text("slow", pieces=4, delay=0.5))
    turn = asyncio.create_task(chat(proxy, A))
    await wait_for(lambda: len(upstream.requests) == 1)
    async with proxy.http.post(url, headers=OPS) as response:
        assert response.status == 503
        assert "Retry-After" in response.headers
    assert (await turn)[0] == 200


async def test_maxproxys_own_origin_passes_and_no_other(cli_env: Path, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy()
    port = proxy.url.rsplit(":", 1)[1]
    async with proxy.http.post(
        f"{proxy.url}/v1/usage/plan/refresh", headers={"Origin": f"http://127.0.0.1:{port}"}
    ) as response:
        assert response.status in (200, 503)  # its page's own request (503: no worker between turns yet)
        assert "Access-Control-Allow-Origin" not in response.headers  # same origin: no CORS grant needed or given
    for foreign in (f"http://localhost:{port}", f"http://127.0.0.1:{int(port) + 1}", "null"):
        async with proxy.http.get(f"{proxy.url}/v1/status", headers={"Origin": foreign}) as response:
            assert response.status == 403, foreign
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_under_a_stored_login_the_plan_is_asked_at_start_and_on_demand(
    stored_login: FakeUpstream, start_proxy: ProxyFactory
) -> None:
    upstream = stored_login
    resets = time.time() + 2 * 3600
    upstream.usage = usage_body(five_hour=(63.0, resets), seven_day=(41.0, resets + 86400))
    proxy = await start_proxy(max_workers=2)
    # At start, as soon as a worker is between turns: one request to the plan's usage endpoint, and no model call.
    await wait_for(lambda: proxy.app[PLAN].asked == 1, timeout=30)
    _, body = await get(proxy, "/v1/usage")
    plan = body["plan"]
    assert (plan["subscription_type"], plan["limits_available"]) == ("max", True)
    windows = {w["name"]: w for w in plan["windows"]}
    assert windows["five_hour"]["utilization"] == 0.63
    assert abs(windows["five_hour"]["resets_at"] - resets) < 1
    assert windows["seven_day"]["utilization"] == 0.41
    assert len(upstream.usage_requests) == 1
    assert upstream.usage_requests[0].headers["Authorization"] == f"Bearer {STORED_TOKEN}"
    assert upstream.requests == []

    # The CLI keeps the endpoint's answer for a minute (in HOME, for every worker) unless an answer's plan headers
    # void it: after a turn, "refresh" asks the endpoint again.
    upstream.push(Reply.text("hi", headers=plan_headers(0.70)))
    assert (await chat(proxy))[0] == 200
    assert {w["name"]: w for w in (await get(proxy, "/v1/usage"))[1]["plan"]["windows"]}["five_hour"][
        "utilization"
    ] == 0.70
    upstream.usage = usage_body(five_hour=(81.0, resets), seven_day=(41.0, resets + 86400))
    async with proxy.http.post(f"{proxy.url}/v1/usage/plan/refresh") as response:
        assert response.status == 200
        refreshed = await response.json()
    assert len(upstream.usage_requests) == 2
    assert {w["name"]: w["utilization"] for w in refreshed["plan"]["windows"]}["five_hour"] == 0.81
    assert refreshed["plan"]["warnings"][0].startswith("five_hour at 81% (warn at 80%)")
