"""The status page at `GET /` in a real headless Chromium (Debian's, through Selenium), against maxproxy with the
real CLI and the fake upstream: it loads cleanly under its CSP, agrees with `/health`, shows a request and its
key's usage within the refresh interval, shows the plan's 97% with a warning, shows nothing without the admin key,
and a page from another origin cannot read `/v1/status`. Skipped when the browser is missing, except under CI.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from maxproxy.bench.upstream import FakeUpstream, Reply, plan_headers

from tests.browser import Browser, missing
from tests.conftest import Proxy, ProxyFactory
from tests.status_screenshot import KEYS, keys_toml, open_page

ADMIN, BOT_A, BOT_B = KEYS["ops"], KEYS["bot-a"], KEYS["bot-b"]
REFRESH = 3.0  # the page's poll interval (`refresh_seconds` in /v1/status)
WITHIN = REFRESH + 5.0  # a poll interval, with room for a slow machine


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A fresh Chromium per test (the leftover-process check after each test rules out one per module)."""
    if (reason := missing()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the browser test, but {reason}")
        pytest.skip(reason)
    chromium = Browser()
    yield chromium
    chromium.close()


async def keyed(start_proxy: ProxyFactory, tmp_path: Path) -> Proxy:
    path = tmp_path / "keys.toml"
    path.write_text(keys_toml())
    return await start_proxy(keys_file=str(path))


def rows(selector: str) -> Any:
    """A WebDriverWait condition: the elements matching `selector` (truthy once there is one)."""
    return lambda driver: driver.find_elements("css selector", selector)


def health_total(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:  # loopback only
        return int(json.load(response)["workers"]["total"])


async def test_page_loads_cleanly_and_agrees_with_health(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, browser: Browser
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    async with proxy.http.get(f"{proxy.url}/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
    for path, kind in (("/status.js", "text/javascript"), ("/status.css", "text/css")):
        async with proxy.http.get(proxy.url + path) as response:
            assert (response.status, response.content_type) == (200, kind)
            assert response.headers["X-Content-Type-Options"] == "nosniff"

    await open_page(browser, proxy.url, ADMIN)
    await browser.wait(lambda d: d.find_element("id", "workers-total").text != "", message="no worker count")
    # The page polls; /health is read at the same moment as the page, until both tell the same number.
    await browser.wait(
        lambda d: d.find_element("id", "workers-total").text == str(health_total(proxy.url)),
        timeout=WITHIN * 2,
        message="the page's worker count never matched /health",
    )
    assert await browser.visible("#data")
    assert not await browser.visible("#login")
    assert await browser.text("#cli-version")
    # CSP violations, script errors and failed loads (a 401 for /favicon.ico included) are SEVERE.
    errors = await browser.errors()
    assert not errors, errors
    print("status page screenshot:", await browser.full_screenshot(tmp_path / "status-page.png"))


async def test_a_request_shows_in_the_recent_list_and_its_keys_row(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, browser: Browser
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    await open_page(browser, proxy.url, ADMIN)
    await browser.wait(rows("#recent tbody tr"), message="the page never rendered")
    assert not await browser.script("return document.querySelector('#keys tr[data-key=\"bot-a\"]')")

    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {BOT_A}"}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        request_id = response.headers["x-request-id"]
        usage = (await response.json())["usage"]

    row = f'#recent tbody tr[data-request-id="{request_id}"]'
    await browser.wait(rows(row), timeout=WITHIN, message="the request never showed in the recent list")
    assert await browser.text(f"{row} .key") == "bot-a"
    assert await browser.text(f"{row} .status") == "200"
    assert await browser.text(f"{row} .protocol") == "chat"
    assert await browser.text(f"{row} .tokens") == f"{usage['prompt_tokens']} → {usage['completion_tokens']}"
    key_row = '#keys tr[data-key="bot-a"]'
    await browser.wait(rows(key_row), timeout=WITHIN, message="bot-a's usage row never showed")
    assert await browser.text(f"{key_row} .today-requests") == "1"
    assert await browser.text(f"{key_row} .today-tokens") == f"{usage['total_tokens']:,}"
    assert await browser.script(f"return document.querySelectorAll('{key_row} svg rect').length") == 24
    assert not await browser.script("return document.querySelector('#keys tr[data-key=\"bot-b\"]')")


async def test_the_plan_at_97_percent_shows_with_a_warning(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, browser: Browser, upstream: FakeUpstream
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    upstream.push(Reply.text("ok", headers=plan_headers(0.97, 0.41)))
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {BOT_A}"}
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200

    await open_page(browser, proxy.url, ADMIN)
    five = '[data-window="five_hour"]'
    await browser.wait(
        lambda d: d.find_element("css selector", f"{five} .pct").text == "97%",
        timeout=WITHIN,
        message="the five-hour bar never showed 97%",
    )
    assert await browser.script(f"return document.querySelector('{five}').dataset.level") == "crit"
    width = await browser.script(f"return document.querySelector('{five} .fill').style.width")
    assert width == "97%"  # set through the CSSOM, which the CSP allows
    assert await browser.text('[data-window="seven_day"] .pct') == "41%"
    assert await browser.script("return document.querySelector('[data-window=\"seven_day\"]').dataset.level") == "ok"
    assert await browser.visible("#plan-warnings")
    assert "97%" in await browser.text("#plan-warnings")
    assert "resets in" in await browser.text(f"{five} .reset")
    print("status page screenshot:", await browser.full_screenshot(tmp_path / "status-page-97.png"))

    # "Refresh plan now" asks the CLI (a POST from the page's own origin, with the key) and shows the answer.
    await browser.run(lambda: browser.driver.find_element("id", "refresh-plan").click())
    message = await browser.wait(
        lambda d: (text := d.find_element("id", "plan-message").text).startswith("plan refreshed") and text,
        timeout=30,
        message="the plan refresh never answered",
    )
    assert message
    assert await browser.text(f"{five} .pct") == "97%"  # re-rendered from the refresh's answer
    # This login (CLAUDE_CODE_OAUTH_TOKEN) cannot read the usage endpoint: the page says where the figures came from.
    assert (await browser.text("#plan-source")).startswith("answers only")


async def test_without_the_admin_key_no_data_is_shown(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, browser: Browser
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    await open_page(browser, proxy.url, None)
    await browser.wait(lambda d: d.find_element("id", "login").is_displayed(), message="no key form")
    assert not await browser.visible("#data")
    assert await browser.text("#workers-total") == ""
    assert not await browser.script("return document.querySelectorAll('#recent tbody tr').length")

    # A key that works for the API but is not an admin key: refused, and not kept.
    await browser.run(lambda: browser.driver.find_element("id", "key-input").send_keys(BOT_B + "\n"))
    await browser.wait(
        lambda d: "not an admin key" in d.find_element("id", "login-message").text, message="403 not shown"
    )
    assert not await browser.visible("#data")
    assert await browser.script("return sessionStorage.length") == 0

    # The admin key opens it; "forget key" closes it again.
    await browser.run(lambda: browser.driver.find_element("id", "key-input").send_keys(ADMIN + "\n"))
    await browser.wait(lambda d: d.find_element("id", "data").is_displayed(), message="the admin key did not open it")
    assert await browser.text("#workers-total") != ""
    assert await browser.script("return document.cookie") == ""
    assert "sk-" not in await browser.script("return location.href")
    await browser.run(lambda: browser.driver.find_element("id", "forget-key").click())
    await browser.wait(lambda d: d.find_element("id", "login").is_displayed(), message="forget key did not close it")
    assert not await browser.visible("#data")
    assert await browser.text("#workers-total") == ""
    assert await browser.script("return sessionStorage.length") == 0


FOREIGN_PAGE = """<!doctype html><meta charset="utf-8"><title>elsewhere</title><pre id="out"></pre>
<script>
const target = %s, key = %s;
const attempts = {
  plain: {},
  credentials: {credentials: "include"},
  bearer: {headers: {Authorization: "Bearer " + key}},
  no_cors: {mode: "no-cors"},
};
(async () => {
  const outcome = {};
  for (const [name, init] of Object.entries(attempts)) {
    try {
      const response = await fetch(target, init);
      outcome[name] = {type: response.type, status: response.status, body: await response.text()};
    } catch (err) {
      outcome[name] = {error: String(err)};
    }
  }
  document.getElementById("out").textContent = JSON.stringify(outcome);
})();
</script>"""


async def test_a_foreign_origin_cannot_read_the_status(
    cli_env: Path, start_proxy: ProxyFactory, tmp_path: Path, browser: Browser
) -> None:
    proxy = await keyed(start_proxy, tmp_path)
    target = f"{proxy.url}/v1/status"
    async with proxy.http.get(target, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
        assert response.status == 200  # readable with the key, from outside a browser

    async def foreign(request: web.Request) -> web.Response:
        return web.Response(text=FOREIGN_PAGE % (json.dumps(target), json.dumps(ADMIN)), content_type="text/html")

    other = web.Application()
    other.router.add_get("/", foreign)
    server = TestServer(other, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port != proxy.server.port
        await browser.get(str(server.make_url("/")))
        outcome = json.loads(
            await browser.wait(lambda d: d.find_element("id", "out").text, message="the foreign script never ended")
        )
    finally:
        await server.close()
    assert set(outcome) == {"plain", "credentials", "bearer", "no_cors"}
    for name in ("plain", "credentials", "bearer"):
        assert "error" in outcome[name], (name, outcome[name])  # the browser refused to hand over the answer
    assert outcome["no_cors"] == {"type": "opaque", "status": 0, "body": ""}
    for attempt in outcome.values():
        assert "workers" not in json.dumps(attempt)
