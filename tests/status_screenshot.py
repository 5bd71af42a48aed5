"""The README's screenshot of the status page: maxproxy with the real CLI against the fake upstream, a few requests
from two keys, plan headers at 84% of the five-hour and 41% of the seven-day window, photographed in headless
Chromium. `python -m tests.status_screenshot docs/status-page.png`. Also the keys and the page opening the browser
test uses.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web
from maxproxy.app import create_app
from maxproxy.bench.upstream import FakeUpstream, Reply, plan_headers
from maxproxy.pool import Pool
from maxproxy.state import POOL

from tests.browser import Browser
from tests.conftest import make_settings

KEY_ITEM = "maxproxy.key"  # where the page keeps the admin key (status.js)
KEYS = {"ops": "sk-ops-admin-0001", "bot-a": "sk-bot-a-00000001", "bot-b": "sk-bot-b-00000002"}


def keys_toml() -> str:
    return "".join(
        f'[keys.{name}]\nkey = "{secret}"\n' + ("admin = true\n" if name == "ops" else "") + "\n"
        for name, secret in KEYS.items()
    )


async def open_page(browser: Browser, url: str, key: str | None) -> None:
    """Open the page with `key` already in this tab's sessionStorage (as if entered before), or with none."""
    await browser.get(f"{url}/status.css")  # same origin, no script: a place to set the storage from
    if key is None:
        await browser.script("sessionStorage.clear()")
    else:
        await browser.script("sessionStorage.setItem(arguments[0], arguments[1])", KEY_ITEM, key)
    await browser.get(f"{url}/")


async def _traffic(url: str, upstream: FakeUpstream, pool: Pool) -> None:
    upstream.push(Reply.text("Here is the summary you asked for.", headers=plan_headers(0.84, 0.41)))
    chat = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}
    calls = [
        ("bot-a", "/v1/chat/completions", chat),
        ("bot-a", "/v1/chat/completions", {**chat, "stream": True}),
        ("bot-b", "/v1/responses", {"model": "claude-sonnet-4", "input": "hello"}),
        ("bot-b", "/v1/messages", {"model": "claude-sonnet-4", "max_tokens": 64, "messages": chat["messages"]}),
        ("bot-a", "/v1/chat/completions", chat),
    ]
    async with aiohttp.ClientSession() as http:
        for name, path, body in calls:
            await pool.wait_warm(30)  # each on a warm worker, as a daemon that has been up a while answers
            headers = {"Authorization": f"Bearer {KEYS[name]}"}
            async with http.post(url + path, json=body, headers=headers) as response:
                await response.read()


async def make_screenshot(path: Path) -> Path:
    """Serve, send the traffic, photograph; everything started here is stopped again."""
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        upstream = FakeUpstream()
        await upstream.start()
        (tmp / "home").mkdir()
        (tmp / "keys.toml").write_text(keys_toml())
        os.environ.update(
            HOME=str(tmp / "home"),
            TMPDIR=str(tmp),
            ANTHROPIC_BASE_URL=upstream.url,
            CLAUDE_CODE_OAUTH_TOKEN="test",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        )
        for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"):
            os.environ.pop(name, None)
        app = create_app(make_settings(tmp, keys_file=str(tmp / "keys.toml")))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}"
        browser = await asyncio.to_thread(Browser, 1280, 900)
        try:
            await _traffic(url, upstream, app[POOL])
            await open_page(browser, url, KEYS["ops"])
            await browser.wait(
                lambda d: len(d.find_elements("css selector", "#recent tbody tr[data-request-id]")) >= 5,
                message="the requests never showed",
            )
            await browser.full_screenshot(path)
        finally:
            await asyncio.to_thread(browser.close)
            await runner.cleanup()
            await upstream.close()
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "status-page.png")
    print(asyncio.run(make_screenshot(target)))
