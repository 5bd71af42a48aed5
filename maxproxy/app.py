"""`create_app(settings)`: the aiohttp application — routes, middlewares, and one cleanup context per resource
(the CLI probe, the worker pool, the conversation store with its sweeps). Nothing happens at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from maxproxy.api.middleware import auth_middleware, context_middleware, origin_middleware
from maxproxy.api.routes import routes
from maxproxy.bus import Bus
from maxproxy.claude.probe import CliStatus, probe
from maxproxy.errors import error_middleware
from maxproxy.pool import Pool
from maxproxy.sessions import Sessions
from maxproxy.settings import Settings
from maxproxy.state import BUS, CLI, POOL, SESSIONS, SETTINGS
from maxproxy.store import Store

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
    yield


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = app[POOL] = Pool(app[SETTINGS], app[BUS])
    await pool.start()
    yield
    await pool.close()


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = Store(settings.state_path / "sessions.sqlite3")
    await store.open()
    sessions = app[SESSIONS] = Sessions(settings, store, app[POOL])
    sweeps = asyncio.create_task(sessions.run_sweeps(), name="session-sweeps")
    try:
        yield
    finally:
        sweeps.cancel()
        await asyncio.gather(sweeps, return_exceptions=True)
        await store.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.body_limit,
        middlewares=[context_middleware, error_middleware, origin_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[BUS] = Bus()
    app[CLI] = CliStatus(path=settings.cli_path, error="starting")
    app.cleanup_ctx.extend([_cli_ctx, _pool_ctx, _sessions_ctx])
    app.add_routes(routes)
    return app
