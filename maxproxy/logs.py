"""Logging: structlog configured once by the entry point. JSON lines on stdout (pretty console output only on a TTY),
constant event names with key=value fields, the request id bound per request through contextvars. Library logs
(aiohttp, asyncio) go through the same renderer. Values under secret-looking keys are masked as a last line of defence;
the code never logs secrets or prompts in the first place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_SECRET_KEYS = frozenset({"authorization", "api_key", "api_keys", "key", "token", "password", "secret", "bot_token"})


def _fallback(obj: Any) -> Any:
    return repr(obj)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def _dumps(obj: Any, default: Any = None, **_: Any) -> str:
    # structlog's JSONRenderer calls serializer(obj, default=...); msgspec wants enc_hook instead.
    return _encoder.encode(obj).decode()


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event.keys() & _SECRET_KEYS:
        event[key] = "***"
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    pretty = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    renderer: Any = structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by maxproxy's access line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
