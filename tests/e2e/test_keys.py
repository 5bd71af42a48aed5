"""Many bots, one subscription: named API keys from a keys file (reloaded while running), per-key limits with
OpenAI's rate-limit headers, fair turns between keys, usage that survives a restart, Prometheus metrics, and the
breaker that stops requests when the plan's limit is reached instead of spending extra usage."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
from maxproxy.bench.daemon import daemon
from maxproxy.bench.upstream import FakeUpstream, Reply, plan_limit
from maxproxy.state import BREAKER, KEYS, POOL, QUOTAS
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Proxy, ProxyFactory, wait_for

MODEL = "claude-sonnet-4"
KEYS_FILE = """
[keys.alice]
key = "sk-alice-0001"
rpm = 2

[keys.bob]
key_sha256 = "{bob}"
models = ["claude-haiku-4"]

[keys.carol]
key = "sk-carol-0003"
max_concurrent = 1

[keys.dave]
key = "sk-dave-00004"
daily_tokens = 50

[keys.ops]
key = "sk-ops-000005"
admin = true
"""


def keys_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "keys.toml"
    bob = hashlib.sha256(b"sk-bob-000002").hexdigest()
    path.write_text(KEYS_FILE.format(bob=bob) + extra)
    return path


async def ask(
    proxy: Proxy, key: str, text: str = "hi", *, model: str = MODEL, stream: bool = False
) -> tuple[int, dict[str, str], Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as response:
        payload = await response.read()
        data: Any = await response.json() if response.content_type == "application/json" else payload.decode()
        return response.status, dict(response.headers), data


async def keyed(start_proxy: ProxyFactory, tmp_path: Path, **overrides: Any) -> Proxy:
    return await start_proxy(keys_file=str(keys_file(tmp_path)), **overrides)


async def test_keys_from_the_file_and_their_models(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    status, _, _ = await ask(proxy, "sk-alice-0001")
    assert status == 200
    status, _, body = await ask(proxy, "sk-nobody-0000")
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    # bob's file entry holds only the secret's SHA-256; bob may use haiku only.
    status, _, _ = await ask(proxy, "sk-bob-000002", model="claude-haiku-4")
    assert status == 200
    status, _, body = await ask(proxy, "sk-bob-000002")
    assert (status, body["error"]["code"], body["error"]["param"]) == (403, "model_not_allowed", "model")


async def test_a_changed_keys_file_is_picked_up(cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    status, _, _ = await ask(proxy, "sk-erin-000006")
    assert status == 401
    keys_file(tmp_path, '\n[keys.erin]\nkey = "sk-erin-000006"\n')
    await wait_for(lambda: any(k.name == "erin" for k in proxy.app[KEYS].keys), timeout=10)
    status, _, _ = await ask(proxy, "sk-erin-000006")
    assert status == 200
    # A broken file keeps the keys in force.
    (tmp_path / "keys.toml").write_text("[keys.erin\n")
    assert not proxy.app[KEYS].reload()
    status, _, _ = await ask(proxy, "sk-erin-000006")
    assert status == 200


async def test_rpm_and_its_headers(cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    _, first, _ = await ask(proxy, "sk-alice-0001")
    _, second, _ = await ask(proxy, "sk-alice-0001")
    assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert second["x-ratelimit-remaining-requests"] == "0"
    status, headers, body = await ask(proxy, "sk-alice-0001")
    assert (status, body["error"]["code"]) == (429, "key_rate_limit")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


async def test_max_concurrent(cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    upstream.push(Reply.text("slow " * 20, pieces=20, delay=0.1))
    slow = asyncio.create_task(ask(proxy, "sk-carol-0003", "slow"))
    await wait_for(lambda: proxy.app[POOL].busy == 1)
    status, headers, body = await ask(proxy, "sk-carol-0003", "second")
    assert (status, body["error"]["code"]) == (429, "key_concurrency_limit")
    assert headers["Retry-After"] == "1"
    assert (await slow)[0] == 200
    assert (await ask(proxy, "sk-carol-0003", "third"))[0] == 200


async def test_a_concurrency_429_has_the_rate_limit_headers(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    upstream.push(Reply(hang_before_headers=True))  # carol's one request stays in flight until it is dropped
    held = asyncio.create_task(ask(proxy, "sk-carol-0003", "hold"))
    await wait_for(lambda: len(upstream.messages_requests) == 1)
    status, headers, body = await ask(proxy, "sk-carol-0003", "second")
    assert (status, body["error"]["code"]) == (429, "key_concurrency_limit")
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert headers["Retry-After"] == "1"
    held.cancel()  # the client goes away: its slot comes back
    with contextlib.suppress(asyncio.CancelledError):
        await held
    await wait_for(lambda: not proxy.app[QUOTAS]._in_flight)
    assert (await ask(proxy, "sk-carol-0003", "third"))[0] == 200


async def test_a_daily_token_budget(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    upstream.push(Reply.text("many tokens", input_tokens=60))
    status, headers, _ = await ask(proxy, "sk-dave-00004")
    assert status == 200
    assert headers["x-ratelimit-limit-tokens"] == "50"
    status, headers, body = await ask(proxy, "sk-dave-00004")
    assert (status, body["error"]["code"]) == (429, "key_token_budget")
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(headers["Retry-After"]) <= 86400


async def test_two_busy_keys_take_turns(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream
) -> None:
    extra = '\n[keys.k1]\nkey = "sk-k1-00000001"\n\n[keys.k2]\nkey = "sk-k2-00000002"\n'
    path = keys_file(tmp_path, extra)
    proxy = await start_proxy(keys_file=str(path), limits={"sonnet": 1}, queue_max=64, queue_timeout=120)
    pool = proxy.app[POOL]
    upstream.default = Reply.text("ok", delay=0.01)
    # k1 floods the model first; k2 comes after all of k1's requests are queued.
    first = [asyncio.create_task(ask(proxy, "sk-k1-00000001", f"k1 {i}")) for i in range(20)]
    await wait_for(lambda: pool.queued == 19, timeout=20)
    second = [asyncio.create_task(ask(proxy, "sk-k2-00000002", f"k2 {i}")) for i in range(20)]
    await wait_for(lambda: pool.queued >= 30, timeout=20)
    results = await asyncio.gather(*first, *second)
    assert all(status == 200 for status, _, _ in results)
    served = [next(t.split()[0] for t in r.texts() if t.startswith("k")) for r in upstream.messages_requests]
    share = served[:20].count("k2") / 20
    assert 0.4 <= share <= 0.6, served[:20]


async def test_usage_per_key_survives_a_restart(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, upstream: FakeUpstream
) -> None:
    first = await keyed(start_proxy, tmp_path)
    upstream.push(Reply.text("a", input_tokens=11), Reply.text("b", input_tokens=13))
    assert (await ask(first, "sk-alice-0001"))[0] == 200
    assert (await ask(first, "sk-carol-0003"))[0] == 200
    await first.server.close()

    second = await keyed(start_proxy, tmp_path)

    async def usage(key: str, query: str = "") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"}
        async with second.http.get(f"{second.url}/v1/usage{query}", headers=headers) as response:
            return response.status, await response.json()

    status, own = await usage("sk-alice-0001")
    assert status == 200
    [row] = own["data"]
    assert (row["key"], row["model"], row["requests"], row["input_tokens"]) == ("alice", MODEL, 1, 11)
    assert row["output_tokens"] > 0
    assert row["cost_usd"] > 0
    assert (await usage("sk-alice-0001", "?key=carol"))[0] == 403
    status, everyone = await usage("sk-ops-000005")
    assert {r["key"] for r in everyone["data"]} == {"alice", "carol"}
    assert everyone["totals"]["requests"] == 2
    assert (await usage("sk-ops-000005", "?days=0"))[0] == 400


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


async def test_metrics_parse_and_move(cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    admin = {"Authorization": "Bearer sk-ops-000005"}

    async def scrape() -> str:
        async with proxy.http.get(f"{proxy.url}/metrics", headers=admin) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return await response.text()

    before = await scrape()
    assert metric(before, "maxproxy_breaker_open", scope="all") == 0
    await wait_for(lambda: proxy.app[POOL].idle >= 1)
    assert metric(await scrape(), "maxproxy_workers", state="idle") >= 1
    assert (await ask(proxy, "sk-alice-0001", stream=True))[0] == 200
    after = await scrape()
    assert metric(after, "maxproxy_requests_total", model=MODEL, key="alice", status="200") == 1
    assert metric(after, "maxproxy_tokens_total", key="alice", model=MODEL, kind="output") > 0
    assert metric(after, "maxproxy_time_to_first_token_seconds_count", model=MODEL) == 1
    assert metric(after, "maxproxy_workers_started_total") >= 1
    assert metric(after, "maxproxy_bus_dropped_total") == 0
    async with proxy.http.get(f"{proxy.url}/metrics", headers={"Authorization": "Bearer sk-alice-0001"}) as response:
        assert response.status == 403  # only admin keys read metrics


async def test_a_plan_limit_opens_the_breaker_until_the_reset(proxy: Proxy, upstream: FakeUpstream) -> None:
    # A reset far enough away that a slow first request cannot outlive it; the breaker's clock is moved to it.
    limit = plan_limit(120)
    reset = float(limit["anthropic-ratelimit-unified-reset"])
    upstream.push(Reply.error(429, "rate limited", headers=limit))
    failed = await ask(proxy, "x")
    assert failed[0] == 429
    calls = len(upstream.messages_requests)
    status, headers, body = await ask(proxy, "x")
    assert (status, body["error"]["code"]) == (429, "subscription_limit")
    assert "five_hour limit is reached" in body["error"]["message"]
    assert 100 <= int(headers["Retry-After"]) <= 120
    assert len(upstream.messages_requests) == calls  # never reached the upstream
    async with proxy.http.get(f"{proxy.url}/health") as response:
        assert [b["scope"] for b in (await response.json())["breaker"]] == ["all"]
    breaker = proxy.app[BREAKER]
    [trip] = breaker.state()
    assert trip.until == reset  # open until the plan's reset, not for the breaker's default time
    breaker.clock = lambda: reset  # the reset time comes, without waiting for it
    assert (await ask(proxy, "x"))[0] == 200  # closed after the reset


async def test_extra_usage_is_not_spent(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy()
    upstream.push(Reply(headers=tuple(plan_limit(600, overage=True).items())))
    assert (await ask(proxy, "x"))[0] == 200  # already billed as extra usage when the CLI says so
    status, _, body = await ask(proxy, "x")
    assert (status, body["error"]["code"]) == (429, "subscription_limit")
    assert "extra usage" in body["error"]["message"]


async def test_extra_usage_when_allowed(cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    proxy = await start_proxy(allow_extra_usage=True)
    upstream.push(Reply(headers=tuple(plan_limit(600, overage=True).items())))
    assert (await ask(proxy, "x"))[0] == 200
    assert (await ask(proxy, "x"))[0] == 200


async def test_without_keys_the_local_caller_sees_all_usage(proxy: Proxy) -> None:
    assert (await ask(proxy, "x"))[0] == 200
    async with proxy.http.get(f"{proxy.url}/v1/usage") as response:
        assert response.status == 200
        [row] = (await response.json())["data"]
    assert (row["key"], row["requests"]) == ("local", 1)


async def test_sighup_reloads_the_keys_file(cli_env: Path, tmp_path: Path) -> None:
    path = keys_file(tmp_path)
    env = {
        **os.environ,
        "MAXPROXY_STATE_DIR": str(tmp_path / "daemon-state"),
        "MAXPROXY_LOG_FORMAT": "json",
        "MAXPROXY_KEYS_FILE": str(path),
        "MAXPROXY_MIN_IDLE": "0",
    }
    async with daemon(env) as (proc, url, records), aiohttp.ClientSession() as http:

        async def models(key: str) -> int:
            async with http.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}) as response:
                return response.status

        assert await models("sk-alice-0001") == 200
        # Same size and modification time as before: the file watch cannot see the change, only SIGHUP can.
        stat = path.stat()
        changed = path.with_suffix(".new")
        changed.write_text(path.read_text().replace("sk-alice-0001", "sk-alice-0009"))
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        changed.replace(path)  # at once: no poll can see a new modification time in between
        # That the watch polls past such a change is tests/test_keys.py's; here the running daemon still has the old
        # key until the signal.
        assert await models("sk-alice-0001") == 200
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: any(r["event"] == "keys_loaded" for r in records))
        assert await models("sk-alice-0001") == 401
        assert await models("sk-alice-0009") == 200
