"""The application's shared state, as typed `web.AppKey`s (string keys warn in aiohttp 3.x), and the per-request
record the access log line is built from.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from maxproxy.breaker import Breaker
from maxproxy.bus import Bus
from maxproxy.catalog import Catalog
from maxproxy.claude.probe import CliStatus
from maxproxy.keys import Key, Keyring
from maxproxy.metrics import Metrics
from maxproxy.notifier import Notifier
from maxproxy.plan import Plan
from maxproxy.pool import Pool
from maxproxy.quota import Quotas
from maxproxy.recent import Recent
from maxproxy.sessions import Sessions
from maxproxy.settings import Settings
from maxproxy.store import Store
from maxproxy.usage import Ledger

SETTINGS = web.AppKey("settings", Settings)
SESSIONS = web.AppKey("sessions", Sessions)
POOL = web.AppKey("pool", Pool)
CLI = web.AppKey("cli", CliStatus)
BUS = web.AppKey("bus", Bus)
KEYS = web.AppKey("keys", Keyring)
STORE = web.AppKey("store", Store)
LEDGER = web.AppKey("ledger", Ledger)
QUOTAS = web.AppKey("quotas", Quotas)
BREAKER = web.AppKey("breaker", Breaker)
METRICS = web.AppKey("metrics", Metrics)
NOTIFIER = web.AppKey("notifier", Notifier)  # only when Telegram is configured
PLAN = web.AppKey("plan", Plan)  # where the subscription's windows stand
RECENT = web.AppKey("recent", Recent)  # the last requests that ran a turn (the status page)
MODELS = web.AppKey("models", Catalog)  # the served model table: configured, then the CLI's list (start-up)


class Inflight:
    """The requests that came before the drain and are still being answered: the drain waits for them while the
    listener stays open (later requests are answered 503), so nothing in flight is cut and nothing new is refused
    at the socket."""

    def __init__(self) -> None:
        self.count = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> bool:
        """Count a request (False once the drain began: it is not waited for)."""
        if self.closing:
            return False
        self.count += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Stop counting new requests and wait for the counted ones; False if some were still running at `timeout`."""
        self.closing = True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


INFLIGHT = web.AppKey("inflight", Inflight)


@dataclass
class Access:
    """What the access line says about one request beyond method, path, status and duration."""

    key_name: str | None = None  # the API key's name (never the key)
    model: str | None = None
    stream: bool | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # an error code sent inside an already-started stream
    session: str | None = None  # the conversation's id
    continued: bool | None = None  # only the new messages went to the CLI
    tool_calls: int | None = None  # the answer handed this many tool calls to the client
    disconnected: bool | None = None


ACCESS = web.RequestKey("access", Access)
KEY = web.RequestKey("key", Key)  # the caller's API key (`keys.LOCAL` when none are configured)
OWNER = web.RequestKey("owner", str)  # whose conversations a request may see: a digest of its API key
