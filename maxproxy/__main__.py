"""The `maxproxy` command: read the settings (flags > `MAXPROXY_*` environment > TOML file > defaults), configure
logging once, and serve until SIGTERM or SIGINT (SIGHUP re-reads the keys file). A bad setting or a busy port ends it
with a one-line message. Under systemd (`Type=notify`) it reports ready once its warm workers are up. `maxproxy
doctor` checks the set-up instead of serving.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import structlog
from aiohttp import web

from maxproxy import __version__, doctor, logs, systemd
from maxproxy.app import create_app
from maxproxy.keys import Keyring, KeysError
from maxproxy.settings import Settings, SettingsError, config_file, load
from maxproxy.state import INFLIGHT, KEYS, POOL

log = structlog.get_logger("maxproxy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="maxproxy",
        description="Serve the OpenAI chat API through the Claude Code CLI on your Claude subscription.",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 3456)")
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default ~/.config/maxproxy/config.toml)")
    parser.add_argument("--version", action="version", version=f"maxproxy {__version__}")
    parser.add_argument(
        "command", nargs="?", choices=["serve", "doctor"], default="serve", help="serve (default), or check the set-up"
    )
    return parser.parse_args(argv)


CUT_AFTER_DRAIN = 1.0  # seconds the server still gives handlers once the drain is over
READY_WAIT = 60.0  # readiness waits this long for warm workers, then is reported anyway (with what is wrong)


async def serve(settings: Settings, config: Path | None) -> None:
    app = create_app(settings)
    keys = app[KEYS]
    # handler_cancellation: a client that disconnects cancels its handler, which stops its CLI turn at once. The
    # drain below waits for the requests in flight; what is left after it is cut at once.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=CUT_AFTER_DRAIN)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        url = f"http://{settings.host}:{runner.addresses[0][1]}"
        log.info(
            "listening",
            url=url,
            config=str(config) if config else "none (defaults and environment)",
            keys_file=str(settings.keys_path) if settings.keys_path else None,
            state_dir=str(settings.state_path),
            workspace=str(settings.workspace_path),
            logs="stdout" + (" (the journal)" if os.environ.get("JOURNAL_STREAM") else ""),
            cli=settings.cli_path,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(keys))
        ready = asyncio.create_task(_ready(app, url), name="ready")
        try:
            await stop.wait()
        finally:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        # New requests get 503 + Retry-After from here on, from a listener that stays open until the requests in
        # flight have finished (or `shutdown_timeout` has passed): closing it first would refuse them at the socket.
        log.info("stopping", drain_seconds=settings.shutdown_timeout)
        systemd.notify("STOPPING=1", "STATUS=draining")
        app[POOL].drain()
        inflight = app[INFLIGHT]
        if not await inflight.drain(settings.shutdown_timeout):
            log.warning("drain_timeout", requests=inflight.count)
    finally:
        await runner.cleanup()
    log.info("stopped")


async def _ready(app: web.Application, url: str) -> None:
    """Tell systemd (if it started us) that requests can be served: once the warm workers are up, or after
    READY_WAIT anyway — then the status says why they are not."""
    pool = app[POOL]
    warm = await pool.wait_warm(READY_WAIT)
    status = f"serving on {url}" if warm else f"serving on {url}; CLI workers not ready: {pool.last_error}"
    systemd.notify("READY=1", f"STATUS={status}"[:400])
    log.info("ready", warm=warm)


def _reload(keys: Keyring) -> None:
    systemd.notify("RELOADING=1")
    keys.reload()
    systemd.notify("READY=1")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "doctor":
        return doctor.main(args.config, host=args.host, port=args.port)
    try:
        settings = load(args.config, host=args.host, port=args.port)
    except SettingsError as exc:
        print(f"maxproxy: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings, config_file(args.config)))
    except KeysError as exc:
        print(f"maxproxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"maxproxy: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
