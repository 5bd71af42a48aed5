"""The plan-usage endpoint as the real pinned CLI uses it for `get_usage`: under a stored claude.ai login it asks
`GET https://api.anthropic.com/api/oauth/usage` (its fixed host, reached here through `bench.tunnel`) with the stored
access token and passes the body through as `rate_limits`; it keeps the answer as a snapshot for a minute (in
`~/.claude.json`, so every CLI of that HOME shares it); an endpoint error, an in-band error or no answer in 5 s give
`rate_limits: null`; under the CLAUDE_CODE_OAUTH_TOKEN login (no profile scope) it asks nothing. A turn through
maxproxy still works under the stored login, and nothing but the fixed host is ever asked for through the proxy.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from maxproxy.bench.floor import WarmCLI
from maxproxy.bench.tunnel import TARGET, Tunnel
from maxproxy.bench.upstream import FakeUpstream, usage_body
from maxproxy.claude import command

from tests.conftest import STORED_TOKEN, ProxyFactory, make_settings, wait_for
from tests.e2e import HELLO


@asynccontextmanager
async def warm_cli(tmp_path: Path) -> AsyncIterator[WarmCLI]:
    """One CLI started and initialised as maxproxy starts a worker, in the test's environment."""
    cli = await WarmCLI.start(make_settings(tmp_path), command.Launch(model="sonnet"))
    try:
        yield cli
    finally:
        await cli.close()


async def get_usage(cli: WarmCLI) -> dict[str, Any]:
    """The answer without its session totals (they depend on what the CLI did before)."""
    started = time.perf_counter()
    answer = await cli.control("get_usage", skip_behaviors=True)
    print(f"get_usage answered in {(time.perf_counter() - started) * 1000:.0f} ms")
    answer.pop("session")
    return answer


async def age_usage_snapshot(home: Path, seconds: float) -> None:
    """Make the CLI's kept answer `seconds` older (it is written to `~/.claude.json` soon after the fetch, not at
    once), so a test need not wait out the minute it is reused for."""
    config = home / ".claude.json"
    await wait_for(lambda: "cachedUsageUtilization" in json.loads(config.read_text()))
    values = json.loads(config.read_text())
    values["cachedUsageUtilization"]["fetchedAtMs"] -= int(seconds * 1000)
    config.write_text(json.dumps(values))


async def test_the_tunnel_serves_the_fixed_host_from_the_fake_and_refuses_everything_else(
    upstream: FakeUpstream, tunnel: Tunnel
) -> None:
    assert tunnel.ca_path is not None
    trusted = ssl.create_default_context(cafile=str(tunnel.ca_path))
    upstream.usage = usage_body(seven_day=(3.0, 1_900_000_000))
    async with aiohttp.ClientSession() as http:
        url = "https://api.anthropic.com/api/oauth/usage?skip_spend=1"
        async with http.get(url, proxy=tunnel.url, ssl=trusted, headers={"Authorization": "Bearer x"}) as response:
            assert response.status == 200
            assert await response.json() == upstream.usage
        for url in ("https://elsewhere.invalid/", "https://api.anthropic.com:8443/", "http://api.anthropic.com/"):
            with pytest.raises(aiohttp.ClientResponseError) as refused:  # CONNECT refused, or the plain answer
                async with http.get(url, proxy=tunnel.url, ssl=trusted) as response:
                    response.raise_for_status()
            assert refused.value.status == 403
    [request] = upstream.usage_requests
    assert (request.query, request.headers["Authorization"]) == ({"skip_spend": "1"}, "Bearer x")
    assert tunnel.connects == [TARGET]
    assert tunnel.refused == [
        "CONNECT elsewhere.invalid:443 HTTP/1.1",
        "CONNECT api.anthropic.com:8443 HTTP/1.1",
        "GET http://api.anthropic.com/ HTTP/1.1",
    ]
    assert upstream.requests == []


async def test_get_usage_under_a_stored_login_answers_the_served_windows_with_one_request(
    stored_login: FakeUpstream, tunnel: Tunnel, cli_env: Path, tmp_path: Path
) -> None:
    now = time.time()
    extra = {"is_enabled": True, "monthly_limit": 5000, "used_credits": 1234, "utilization": 24.68, "currency": "USD"}
    stored_login.usage = usage_body(five_hour=(97.0, now + 3600), seven_day=(41.5, now + 3 * 86400), extra_usage=extra)
    async with warm_cli(tmp_path) as cli:
        answer = await get_usage(cli)
        assert answer == {
            "subscription_type": "max",
            "rate_limits_available": True,
            "rate_limits": stored_login.usage,  # the body as served: utilization in percent, resets_at in ISO 8601
            "behaviors": None,
        }
        assert answer["rate_limits"]["five_hour"]["utilization"] == 97
        [request] = stored_login.usage_requests
        assert (request.path, request.query) == ("/api/oauth/usage", {})
        assert request.headers["Authorization"] == f"Bearer {STORED_TOKEN}"
        assert request.headers["anthropic-beta"] == "oauth-2025-04-20"
        assert request.headers["Host"] == "api.anthropic.com"

        # Right after, the CLI answers from its snapshot: the endpoint is not asked again ...
        stored_login.usage = usage_body(five_hour=(98.0, now + 3600))
        assert (await get_usage(cli))["rate_limits"]["five_hour"]["utilization"] == 97
        assert len(stored_login.usage_requests) == 1
        # ... nor by another CLI of the same HOME (the snapshot is in ~/.claude.json) ...
        async with warm_cli(tmp_path / "second") as other:
            assert (await get_usage(other))["rate_limits"]["five_hour"]["utilization"] == 97
        assert len(stored_login.usage_requests) == 1
        # ... until it is a minute old (measured: 55 s old it is still served): then it is fetched again.
        await age_usage_snapshot(cli_env, 61)
        aged = time.perf_counter()
        async with asyncio.timeout(10):
            while len(stored_login.usage_requests) == 1:  # the CLI notices the changed file soon, not at once
                answer = await cli.control("get_usage", skip_behaviors=True)
                await asyncio.sleep(0.05)
        print(f"the aged snapshot was noticed after {time.perf_counter() - aged:.2f} s")
        assert answer["rate_limits"]["five_hour"]["utilization"] == 98
        assert len(stored_login.usage_requests) == 2
    assert stored_login.requests == []  # no model call for any of it
    assert set(tunnel.connects) == {TARGET}
    assert tunnel.refused == []


async def test_get_usage_under_the_oauth_token_login_asks_nothing(
    cli_env: Path, upstream: FakeUpstream, tunnel: Tunnel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token login with the same way out as a stored login, so that a request would be seen if one were made.
    monkeypatch.delenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC")
    for name, value in tunnel.environment().items():
        monkeypatch.setenv(name, value)
    upstream.usage = usage_body(five_hour=(10.0, time.time() + 3600))
    async with warm_cli(tmp_path) as cli:
        answer = await get_usage(cli)
    assert answer == {"subscription_type": None, "rate_limits_available": False, "rate_limits": None, "behaviors": None}
    assert upstream.usage_requests == []
    assert tunnel.refused == []


async def test_get_usage_with_nonessential_traffic_disabled_asks_nothing(
    stored_login: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    stored_login.usage = usage_body(five_hour=(10.0, time.time() + 3600))
    async with warm_cli(tmp_path) as cli:
        answer = await get_usage(cli)
    # The plan applies (the login has the profile scope), but its windows are never fetched.
    assert (answer["rate_limits_available"], answer["rate_limits"]) == (True, None)
    assert stored_login.usage_requests == []


@pytest.mark.parametrize(
    ("status", "body", "asked_again"),
    [
        (429, None, False),  # the CLI holds off after a 429: the next read does not ask
        (500, None, True),
        (200, {}, True),  # a body with none of the window keys: an in-band error to the CLI
        (200, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, True),
    ],
)
async def test_an_endpoint_error_gives_no_rate_limits_and_no_snapshot(
    stored_login: FakeUpstream,
    tunnel: Tunnel,
    tmp_path: Path,
    status: int,
    body: dict[str, Any] | None,
    asked_again: bool,
) -> None:
    stored_login.usage_status = status
    if body is not None:
        stored_login.usage = body
    async with warm_cli(tmp_path) as cli:
        for _ in range(2):
            answer = await get_usage(cli)
            assert answer["subscription_type"] == "max"
            assert (answer["rate_limits_available"], answer["rate_limits"]) == (True, None)
    assert len(stored_login.usage_requests) == (2 if asked_again else 1)
    assert tunnel.refused == []


async def test_a_401_from_the_endpoint_makes_the_cli_try_a_refresh_elsewhere_which_the_tunnel_refuses(
    stored_login: FakeUpstream, tunnel: Tunnel, tmp_path: Path
) -> None:
    stored_login.usage_status = 401
    async with warm_cli(tmp_path) as cli:
        answer = await get_usage(cli)
        assert (answer["rate_limits_available"], answer["rate_limits"]) == (True, None)
        await wait_for(lambda: tunnel.refused != [])
    assert len(stored_login.usage_requests) == 1
    # The token refresh goes to another host: refused, never dialed, and no other target was asked for.
    assert all(line.startswith("CONNECT ") and TARGET not in line for line in tunnel.refused), tunnel.refused
    print("refused:", tunnel.refused)


async def test_an_endpoint_that_does_not_answer_gives_no_rate_limits_after_the_cli_s_timeout(
    stored_login: FakeUpstream, tmp_path: Path
) -> None:
    stored_login.usage_hang = True
    async with warm_cli(tmp_path) as cli:
        started = asyncio.get_running_loop().time()
        answer = await get_usage(cli)  # the CLI gives up by itself (5 s, measured), well within `control`'s 30 s
        print(f"a hanging endpoint: get_usage answered after {asyncio.get_running_loop().time() - started:.2f} s")
    assert answer["rate_limits"] is None
    assert len(stored_login.usage_requests) == 1


async def test_a_turn_through_maxproxy_works_under_the_stored_login_and_asks_only_the_fixed_host(
    stored_login: FakeUpstream, tunnel: Tunnel, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(max_workers=1, min_idle=1)
    answer = await proxy.openai.chat.completions.create(model="claude-sonnet-4", messages=HELLO)
    assert answer.choices[0].message.content == "Hello from fake upstream!"
    async with proxy.http.get(proxy.url + "/health") as response:
        assert (await response.json())["cli"]["billing"] == "subscription"
    # The model calls went to ANTHROPIC_BASE_URL with the stored token; what the CLI asked its fixed host for went
    # through the tunnel and is kept apart from them.
    assert [r.path for r in stored_login.requests] == ["/v1/messages"]
    assert stored_login.requests[0].headers["Authorization"] == f"Bearer {STORED_TOKEN}"
    print("asked of the fixed host:", sorted({r.path.split("?")[0] for r in stored_login.side_requests}))
    assert set(tunnel.connects) <= {TARGET}
    assert tunnel.refused == []
