"""Shared fixtures: the fake Anthropic upstream, the environment the real CLI runs in (a temp HOME, a subscription
OAuth token, no API key, traffic only to the fake), maxproxy itself on a loopback port, real clients, and a check
that no `claude` process outlives a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from maxproxy.app import create_app
from maxproxy.bench.tunnel import Tunnel
from maxproxy.bench.upstream import FakeUpstream
from maxproxy.settings import PROJECT_CLI, Settings, check
from openai import AsyncOpenAI

from tests.fakes.telegram import FakeTelegram
from tests.procs import children

FAKE_CLI = Path(__file__).parent / "fakes" / "cli.py"


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test ends with no child process of the test run left: no orphans, no zombies."""
    yield
    leftover = children(os.getpid())
    assert not leftover, f"processes left behind: {leftover}"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def cli_env(upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server's environment, which its CLI children inherit: authenticated as a subscription user would be."""
    if not PROJECT_CLI.exists():
        pytest.fail("the pinned CLI is missing: run `make install`")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", upstream.url)
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "test")
    monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return home


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    """A fake Telegram Bot API on loopback (the notifier's `telegram_api_base`)."""
    fake = FakeTelegram()
    await fake.start()
    yield fake
    await fake.close()


STORED_TOKEN = "sk-ant-oat01-test"  # the stored login's access token: the plan-usage endpoint's bearer


@pytest.fixture
async def tunnel(upstream: FakeUpstream) -> AsyncIterator[Tunnel]:
    """The CLI's only way to its fixed host (`bench.tunnel`): `CONNECT api.anthropic.com:443` reaches the fake upstream
    over TLS from a test CA; every other target is refused, never dialed, and listed in `tunnel.refused`."""
    proxy = Tunnel(upstream.url)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
def stored_login(
    cli_env: Path, upstream: FakeUpstream, tunnel: Tunnel, monkeypatch: pytest.MonkeyPatch
) -> FakeUpstream:
    """Logged in as `claude /login` leaves it (a credentials file for a Max plan with the `user:profile` scope, no
    CLAUDE_CODE_OAUTH_TOKEN), the CLI's fixed host reached through `tunnel`: `get_usage` then asks the fake's
    plan-usage endpoint (script it with `upstream.usage = usage_body(...)` or `upstream.usage_status`; its requests are
    in `upstream.usage_requests`). Nonessential traffic is allowed: with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC the
    CLI never asks the endpoint (measured), and what else it then asks its host for is in `upstream.side_requests`."""
    credentials = cli_env / ".claude" / ".credentials.json"
    credentials.parent.mkdir(exist_ok=True)
    login = {
        "accessToken": STORED_TOKEN,
        "refreshToken": "sk-ant-ort01-test",
        "expiresAt": int((time.time() + 3600) * 1000),  # valid for the test: no refresh is attempted
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_20x",
    }
    credentials.write_text(json.dumps({"claudeAiOauth": login}))
    for name in ("CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"):
        monkeypatch.delenv(name)
    for name in ("https_proxy", "http_proxy", "no_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # the tunnel's variables must be the only proxy settings
    for name, value in tunnel.environment().items():
        monkeypatch.setenv(name, value)
    return upstream


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "stop_step_timeout": 2.0,
        "upstream_retries": 0,
        "upstream_timeout": 15.0,
        "upstream_idle_timeout": 10.0,
        **overrides,
    }
    settings = msgspec.convert(values, Settings, strict=False)
    check(settings)
    return settings


@dataclass
class Proxy:
    server: TestServer
    app: web.Application
    url: str
    openai: AsyncOpenAI
    http: aiohttp.ClientSession

    @property
    def settings(self) -> Settings:
        from maxproxy.state import SETTINGS

        return self.app[SETTINGS]


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> AsyncIterator[ProxyFactory]:
    """Start maxproxy (real app, real CLI, loopback port) with setting overrides; closed after the test."""
    sessions: list[aiohttp.ClientSession] = []
    clients: list[AsyncOpenAI] = []

    async def start(**overrides: Any) -> Proxy:
        settings = make_settings(tmp_path, **overrides)
        app = create_app(settings)
        server = await aiohttp_server(app, host="127.0.0.1", shutdown_timeout=settings.shutdown_timeout)
        url = str(server.make_url("")).rstrip("/")
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key=overrides.get("api_keys", ["not-needed"])[0], max_retries=0)
        http = aiohttp.ClientSession()
        sessions.append(http)
        clients.append(client)
        return Proxy(server, app, url, client, http)

    yield start
    for client in clients:
        await client.close()
    for http in sessions:
        await http.close()


@pytest.fixture
async def proxy(cli_env: Path, start_proxy: ProxyFactory) -> Proxy:
    """maxproxy with the default test settings and the real CLI."""
    return await start_proxy()


def fake_cli(tmp_path: Path, mode: str) -> str:
    """A `claude` stand-in for faults the real CLI cannot produce (see tests/fakes/cli.py)."""
    script = tmp_path / f"fake-claude-{mode}"
    script.write_text(f'#!/bin/sh\nexec {shutil.which("python3") or sys.executable} {FAKE_CLI} {mode} "$@"\n')
    script.chmod(0o755)
    return str(script)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
