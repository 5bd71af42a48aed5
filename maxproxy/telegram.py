"""A small Telegram Bot API client: `sendMessage` and `editMessageText` over one aiohttp session, each call bounded
in time. A 429 is honoured (it waits `retry_after`, capped, then tries again); other failures are logged without the
URL (it holds the bot token) and give up. Nothing here is ever awaited on a request's path: the notifier calls it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger("maxproxy.telegram")

CALL_TIMEOUT = 10.0
MAX_RETRY_AFTER = 60.0
ATTEMPTS = 3


class Telegram:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self._session = session
        self._base = f"{base.rstrip('/')}/bot{token}"

    async def send(self, chat_id: str, text: str) -> int | None:
        """Send a message; its id, or None if it could not be sent."""
        result = await self._call("sendMessage", chat_id=chat_id, text=text, disable_web_page_preview=True)
        return int(result["message_id"]) if isinstance(result, dict) and "message_id" in result else None

    async def edit(self, chat_id: str, message_id: int, text: str) -> bool:
        result = await self._call(
            "editMessageText", chat_id=chat_id, message_id=message_id, text=text, disable_web_page_preview=True
        )
        return result is not None

    async def _call(self, method: str, **params: Any) -> Any:
        for _ in range(ATTEMPTS):
            try:
                async with self._session.post(
                    f"{self._base}/{method}", json=params, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)
                ) as response:
                    data = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # Never the exception's text: aiohttp's names the URL, and the URL holds the token.
                log.warning("telegram_unreachable", method=method, error=type(exc).__name__)
                return None
            if not isinstance(data, dict):
                data = {}
            if response.status == 429:
                wait = (data.get("parameters") or {}).get("retry_after", 1)
                await asyncio.sleep(min(MAX_RETRY_AFTER, max(0.0, float(wait))))
                continue
            if data.get("ok"):
                return data.get("result", True)
            description = str(data.get("description", ""))
            if "message is not modified" in description:
                return True
            log.warning("telegram_refused", method=method, status=response.status, description=description[:200])
            return None
        log.warning("telegram_rate_limited", method=method)
        return None
