"""A headless Chromium for the status page's tests, driven by Selenium: Debian's `chromium` and `chromedriver` named
by path (so Selenium Manager never downloads a driver or sends usage statistics), and an async face over the
synchronous driver (each call runs in a thread, so the event loop serving maxproxy keeps running).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
T = TypeVar("T")


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


class Browser:
    """One headless Chromium tab. Blocking Selenium calls go through `run` (a thread)."""

    def __init__(self, width: int = 1280, height: int = 1000) -> None:
        os.environ["SE_AVOID_STATS"] = "true"  # read when Selenium starts: no usage statistics sent anywhere
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",  # root in CI, where Chromium's sandbox cannot start
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",  # no traffic of its own: only what the tests ask for
            "--disable-component-update",
            "--disable-sync",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(call, *args)

    async def get(self, url: str) -> None:
        await self.run(self.driver.get, url)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_script, source, *args)

    async def wait(self, condition: Callable[[Any], T], timeout: float = 20.0, message: str = "") -> T:
        """Wait until `condition(driver)` is truthy (Selenium polls it every 0.1 s) and return its value."""
        from selenium.webdriver.support.wait import WebDriverWait

        wait = WebDriverWait(self.driver, timeout, poll_frequency=0.1)
        return await self.run(wait.until, condition, message)

    async def text(self, selector: str) -> str:
        """The text of the first element matching `selector` ("" when there is none), as the DOM holds it."""
        value = await self.script(
            "const el = document.querySelector(arguments[0]); return el ? el.textContent : '';", selector
        )
        return str(value).strip()

    async def visible(self, selector: str) -> bool:
        """Whether `selector` matches an element that takes up space (not hidden, nor inside a hidden one)."""
        return bool(
            await self.script(
                "const el = document.querySelector(arguments[0]);"
                "return !!el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';",
                selector,
            )
        )

    async def console(self) -> list[dict[str, Any]]:
        """The browser log since the last call (reading drains it)."""
        entries: list[dict[str, Any]] = await self.run(self.driver.get_log, "browser")
        return entries

    async def errors(self) -> list[dict[str, Any]]:
        return [entry for entry in await self.console() if entry.get("level") == "SEVERE"]

    async def screenshot(self, path: Path) -> Path:
        await self.run(self.driver.save_screenshot, str(path))
        return path

    async def full_screenshot(self, path: Path) -> Path:
        """The whole page, not just the window (Chromium's DevTools capture beyond the viewport)."""
        width, height = await self.script("const d = document.documentElement; return [d.scrollWidth, d.scrollHeight];")
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = await self.run(
            self.driver.execute_cdp_cmd,
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self.driver.quit()
