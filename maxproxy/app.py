"""`create_app(settings)`: the aiohttp application — routes, middlewares, and one cleanup context per resource
(the keys file watch, the Telegram notifier, the CLI probe, the model catalogue, the worker pool, the plan's
refresher, the store, conversations with their sweeps, usage). Nothing happens at import time; a keys file that
cannot be used stops `create_app` with `KeysError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from maxproxy import __version__
from maxproxy.api import page
from maxproxy.api.middleware import auth_middleware, context_middleware, origin_middleware, secure_headers
from maxproxy.api.routes import routes
from maxproxy.breaker import Breaker
from maxproxy.bus import Alert, Bus
from maxproxy.catalog import Catalog
from maxproxy.claude.probe import CliStatus, probe
from maxproxy.errors import error_middleware
from maxproxy.keys import Keyring
from maxproxy.metrics import Metrics
from maxproxy.notifier import Notifier
from maxproxy.plan import Plan
from maxproxy.pool import Pool
from maxproxy.quota import Quotas
from maxproxy.recent import Recent
from maxproxy.sessions import Sessions
from maxproxy.settings import Settings
from maxproxy.state import (
    BREAKER,
    BUS,
    CLI,
    INFLIGHT,
    KEYS,
    LEDGER,
    METRICS,
    MODELS,
    NOTIFIER,
    PLAN,
    POOL,
    QUOTAS,
    RECENT,
    SESSIONS,
    SETTINGS,
    STORE,
    Inflight,
)
from maxproxy.store import Store, UsageStore
from maxproxy.telegram import Telegram
from maxproxy.usage import Ledger

log = structlog.get_logger("maxproxy.app")


async def _cli_ctx(app: web.Application) -> AsyncIterator[None]:
    status = await probe(app[SETTINGS])
    app[CLI] = status
    if status.error:
        log.error("cli_unavailable", path=status.path, error=status.error)
    else:
        log.info(
            "cli_ready",
            path=status.path,
            version=status.version,
            pinned=status.version == status.pinned_version,
            token_source=status.token_source,
            api_key_source=status.api_key_source,
        )
        if status.billing == "api_key":
            log.warning("cli_bills_api_key", api_key_source=status.api_key_source)
        if status.logged_in is False:
            log.warning("cli_not_logged_in", path=status.path, fix=status.problem())
    yield


async def _models_ctx(app: web.Application) -> AsyncIterator[None]:
    """The CLI's model list (from the probe) joins the configured names; without it the configured table serves."""
    catalog, cli = app[MODELS], app[CLI]
    if cli.models:
        catalog.learn(cli.models)
        app[METRICS].models.update(catalog)  # their requests get their own metric labels
        log.info("models_from_cli", served=len(catalog), cli=[m.value for m in cli.models])
    else:
        log.warning("models_configured_only", reason=cli.error or cli.models_error, served=len(catalog))
    # Names the settings or the keys file may give before the CLI is asked, which it turned out not to list.
    named = {*app[SETTINGS].warm_models, *(m for key in app[KEYS].keys for m in key.models or ())}
    if unserved := sorted(name for name in named if name not in catalog):
        log.warning("models_not_served", models=unserved)
    yield


@contextlib.asynccontextmanager
async def _running(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """A background task owned by its resource's context: cancelled and awaited when the context ends."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _keys_ctx(app: web.Application) -> AsyncIterator[None]:
    async with _running(app[KEYS].watch(), "keys-watch"):
        yield


async def _notifier_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.telegram:
        yield
        return
    async with aiohttp.ClientSession() as session:
        telegram = Telegram(session, settings.telegram_api_base, settings.telegram_bot_token)
        notifier = app[NOTIFIER] = Notifier(settings, app[BUS], telegram)
        async with _running(notifier.run(), "notifier"):
            app[BUS].announce(Alert("lifecycle", f"started (maxproxy {__version__}, {settings.host}:{settings.port})"))
            yield
        await notifier.say(Alert("lifecycle", "stopped"), timeout=3.0)


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    catalog: Catalog = app[MODELS]
    pool = app[POOL] = Pool(app[SETTINGS], app[BUS], catalog)
    app[METRICS].watch(pool, app[BREAKER], app[PLAN])
    await pool.start()
    yield
    await pool.close()


async def _plan_ctx(app: web.Application) -> AsyncIterator[None]:
    """The plan's windows, asked of a worker between turns (`get_usage`: the plan's usage endpoint, not a billed
    request) at start and every `plan_refresh_interval`."""
    plan = app[PLAN]
    plan.ask = functools.partial(app[POOL].ask, "get_usage", skip_behaviors=True)  # no scan of local transcripts
    async with _running(plan.run(), "plan-refresh"):
        yield
    plan.ask = None


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE] = Store(app[SETTINGS].state_path / "sessions.sqlite3")
    await store.open()
    try:
        yield
    finally:
        await store.close()


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    catalog: Catalog = app[MODELS]
    sessions = app[SESSIONS] = Sessions(app[SETTINGS], app[STORE], app[POOL], catalog)
    async with _running(sessions.run_sweeps(), "session-sweeps"):
        yield
    await sessions.drain()  # a turn still being recorded finishes before the store closes


async def _usage_ctx(app: web.Application) -> AsyncIterator[None]:
    ledger = app[LEDGER] = Ledger(UsageStore(app[STORE]))
    await ledger.load()
    app[QUOTAS] = Quotas(ledger)
    stop_listening = app[BUS].listen(ledger.observe)  # each turn's usage, counted before its response ends
    try:
        async with _running(ledger.run(), "usage-writer"):
            yield
    finally:
        stop_listening()
    await ledger.flush()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.body_limit,
        middlewares=[context_middleware, error_middleware, origin_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[INFLIGHT] = Inflight()
    app[KEYS] = Keyring(settings)
    app[BUS] = Bus()
    app[BREAKER] = Breaker(settings, app[BUS])
    app[METRICS] = Metrics(set(settings.model_table))
    app[BUS].listen(app[METRICS].observe)
    app[BUS].listen(app[BREAKER].hear)  # open before the next request is admitted
    app[PLAN] = Plan(settings, app[BUS])
    app[BUS].listen(app[PLAN].hear)
    app[RECENT] = Recent()
    app[CLI] = CliStatus(path=settings.cli_path, error="starting")
    app[MODELS] = Catalog(settings)
    app.cleanup_ctx.extend(
        # Torn down in reverse: sessions drain (turns still being recorded) before usage flushes and the store closes.
        [_keys_ctx, _notifier_ctx, _cli_ctx, _models_ctx, _pool_ctx, _plan_ctx, _store_ctx, _usage_ctx, _sessions_ctx]
    )
    app.on_response_prepare.append(secure_headers)
    app.add_routes(routes)
    app.add_routes(page.routes)  # the status page at `/`
    return app
