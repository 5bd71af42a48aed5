"""The application's shared state, as typed `web.AppKey`s (string keys warn in aiohttp 3.x), and the per-request
record the access log line is built from.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from maxproxy.breaker import Breaker
from maxproxy.bus import Bus
from maxproxy.claude.probe import CliStatus
from maxproxy.keys import Key, Keyring
from maxproxy.metrics import Metrics
from maxproxy.notifier import Notifier
from maxproxy.pool import Pool
from maxproxy.quota import Quotas
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
