"""A CLI that is not logged in is a readiness problem: `/health` is 503 and names the fix, `billing` claims no
subscription it has not seen, and a chat request gets 503 `cli_not_logged_in` with the command to run (the words of
`maxproxy doctor`) — without a request reaching the upstream. The environment is `cli_env`'s (a temp HOME with no
credentials) without the OAuth token."""

from __future__ import annotations

from pathlib import Path

import pytest
from maxproxy import errors
from maxproxy.bench.upstream import FakeUpstream
from maxproxy.settings import PROJECT_CLI
from maxproxy.state import CLI

from tests.conftest import ProxyFactory
from tests.e2e import CHAT, HELLO


async def test_not_logged_in_is_unready_and_says_how_to_log_in(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN")
    proxy = await start_proxy()
    fix = f"run `{PROJECT_CLI} auth login` as the user maxproxy runs as (HOME={cli_env})"
    assert errors.login_fix(str(PROJECT_CLI)) == fix  # what `maxproxy doctor` prints as the fix
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 503
        health = await response.json()
    assert health["ready"] is False
    assert health["problems"] == [f"CLI: not logged in; {fix}"]
    assert health["cli"]["token_source"] == "none"
    assert health["cli"]["billing"] == "none"
    for stream in (False, True):
        async with proxy.http.post(
            proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO, "stream": stream}
        ) as response:
            assert response.status == 503
            assert int(response.headers["Retry-After"]) >= 1
            error = (await response.json())["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "cli_not_logged_in")
        assert fix in error["message"]
    assert upstream.messages_requests == []  # the CLI refuses by itself, before any request


async def test_a_turn_that_says_not_logged_in_makes_health_unready_until_one_is_answered(
    cli_env: Path, start_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Started logged in; the login is then gone (the CLI re-reads its credentials every turn, measured): here the
    # stored login is simulated by a credentials file that is removed, then written again.
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN")
    credentials = cli_env / ".claude" / ".credentials.json"
    credentials.parent.mkdir()
    login = (
        '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-test", "refreshToken": "r", "expiresAt": 9999999999999, '
        '"scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}}'
    )
    credentials.write_text(login)
    proxy = await start_proxy()
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 200
        assert (await response.json())["cli"]["billing"] == "subscription"
    credentials.unlink()
    async with proxy.http.post(proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO}) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "cli_not_logged_in"
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 503
        assert "not logged in" in (await response.json())["problems"][0]
    assert proxy.app[CLI].logged_in is False
    credentials.write_text(login)
    async with proxy.http.post(proxy.url + CHAT, json={"model": "claude-sonnet-4", "messages": HELLO}) as response:
        assert response.status == 200
    async with proxy.http.get(proxy.url + "/health") as response:
        assert response.status == 200
