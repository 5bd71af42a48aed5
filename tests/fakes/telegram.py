"""A fake Telegram Bot API on 127.0.0.1: records every `sendMessage` / `editMessageText` (with the time it came),
gives messages ids, and can answer 429 with `retry_after`, answer 500, or hang, as a test scripts it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-TOKEN"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeTelegram:
    calls: list[Call] = field(default_factory=list)
    faults: deque[tuple[int, int]] = field(default_factory=deque)  # (status, retry_after) for the next calls
    hang: bool = False
    hanging: int = 0
    url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def texts(self, method: str | None = None) -> list[str]:
        return [c.params.get("text", "") for c in self.calls if method is None or c.method == method]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        call = Call(request.match_info["method"], await request.json())
        self.calls.append(call)
        if self.hang:
            self.hanging += 1
            await self._release.wait()
        if self.faults:
            status, retry_after = self.faults.popleft()
            body: dict[str, Any] = {"ok": False, "error_code": status, "description": f"fake error {status}"}
            if status == 429:
                body["parameters"] = {"retry_after": retry_after}
            return web.json_response(body, status=status)
        result: dict[str, Any] = {"message_id": call.params.get("message_id") or next(self._ids), "text": ""}
        return web.json_response({"ok": True, "result": result})
