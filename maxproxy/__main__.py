"""The `maxproxy` command: read the settings (flags > `MAXPROXY_*` environment > TOML file > defaults), configure
logging once, and serve until SIGTERM or SIGINT. A bad setting or a busy port ends it with a one-line message.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog
from aiohttp import web

from maxproxy import __version__, logs
from maxproxy.app import create_app
from maxproxy.keys import KeysError
from maxproxy.settings import Settings, SettingsError, load
from maxproxy.state import KEYS, POOL

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
    return parser.parse_args(argv)


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    keys = app[KEYS]
    # handler_cancellation: a client that disconnects cancels its handler, which stops its CLI turn at once.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "listening",
            url=f"http://{settings.host}:{runner.addresses[0][1]}",
            state_dir=str(settings.state_path),
            workspace=str(settings.workspace_path),
            cli=settings.cli_path,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, keys.reload)  # the keys file, again (also picked up on change)
        await stop.wait()
        # New requests get 503 from here on; turns in flight get `shutdown_timeout` to finish.
        log.info("stopping", drain_seconds=settings.shutdown_timeout)
        app[POOL].drain()
    finally:
        await runner.cleanup()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load(args.config, host=args.host, port=args.port)
    except SettingsError as exc:
        print(f"maxproxy: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except KeysError as exc:
        print(f"maxproxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"maxproxy: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
