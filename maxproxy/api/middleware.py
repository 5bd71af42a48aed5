"""The middlewares every request passes, outermost first: the request context (request id, access line, client
disconnects), error rendering (`errors.error_middleware`), browser-origin policy, and API-key authentication.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import structlog
from aiohttp import web

from maxproxy import errors
from maxproxy.api import page
from maxproxy.conversation import owner_of
from maxproxy.errors import Handler
from maxproxy.keys import LOCAL
from maxproxy.recent import Entry
from maxproxy.state import ACCESS, INFLIGHT, KEY, KEYS, METRICS, OWNER, RECENT, SETTINGS, Access

log = structlog.get_logger("maxproxy.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Requests that run a turn, by protocol: counted in metrics and listed on the status page.
TURN_PATHS = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/messages": "messages"}
# Without a key: liveness (service managers, `doctor`), and the status page itself, which holds no data (its script
# asks `/v1/status` with the key the operator enters).
OPEN_PATHS = frozenset({"/health"}) | page.PATHS
# The status page asks every few seconds while it is open: its answered requests are access lines at debug level.
QUIET_PATHS = frozenset({"/v1/status"}) | page.PATHS


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id (the client's `x-request-id` if sane, else a new one) and write one access line."""
    supplied = request.headers.get("x-request-id", "")
    request_id = supplied if _REQUEST_ID.fullmatch(supplied) else "req_" + secrets.token_hex(8)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    access = request[ACCESS] = Access()
    began = time.time()
    started = time.monotonic()
    status = 500
    counted = request.app[INFLIGHT].enter()
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["x-request-id"] = request_id
            if errors.shape_of(request) == "anthropic":
                response.headers["request-id"] = request_id  # where the Anthropic SDKs read it
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        access.disconnected = True
        status = 499  # the client went away (nginx's convention)
        raise
    finally:
        if counted:
            request.app[INFLIGHT].leave()
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        if (protocol := TURN_PATHS.get(request.path)) is not None:
            request.app[METRICS].request(access, status, duration_ms / 1000)
            if request.method == "POST":
                request.app[RECENT].add(_entry(request, request_id, protocol, began, status, duration_ms))
        quiet = request.path in QUIET_PATHS and status < 400
        (log.debug if quiet else log.info)(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=duration_ms,
            **{k: v for k, v in vars(access).items() if v is not None},
        )
        structlog.contextvars.unbind_contextvars("request_id")


def _entry(
    request: web.Request, request_id: str, protocol: str, began: float, status: int, duration_ms: float
) -> Entry:
    access = request[ACCESS]
    return Entry(
        time=began,
        request_id=request_id,
        key=access.key_name if request.app[KEYS].enabled else LOCAL.name,  # None: refused before a key was known
        model=access.model,
        protocol=protocol,
        path=request.path,
        status=status,
        stream=access.stream,
        ttft_ms=access.ttft_ms,
        duration_ms=duration_ms,
        input_tokens=access.prompt_tokens,
        output_tokens=access.completion_tokens,
    )


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: no response is sniffed into another type (streams included)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Headers": (
            "Authorization, Content-Type, X-Request-Id, X-Session-Id, X-Api-Key, Anthropic-Version, Anthropic-Beta, "
            "Anthropic-Dangerous-Direct-Browser-Access"
        ),
        "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A web page the user opens must not drive the CLI: browser requests need an allow-listed Origin, and on a
    loopback bind the Host must be a loopback name (a DNS-rebound page names its own host)."""
    settings = request.app[SETTINGS]
    if settings.loopback and _host_name(request.host.lower()) not in _LOOPBACK_NAMES | {settings.host}:
        raise errors.Forbidden(f"Host {request.host!r} is not a loopback name", code="host_not_allowed")
    origin = request.headers.get("Origin")
    if origin is None or origin == f"{request.scheme}://{request.host}":
        # No Origin: not a browser's cross-origin request. maxproxy's own origin: its status page (the Host is a
        # loopback name here on a loopback bind; beyond loopback every request needs a key, which a foreign page
        # does not have: the page keeps it in its own origin's sessionStorage).
        return await handler(request)
    if origin not in settings.cors_origins:
        raise errors.Forbidden(f"Origin {origin!r} is not allowed (setting `cors_origins`)", code="origin_not_allowed")
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=_cors_headers(origin))
    try:
        response = await handler(request)
    except errors.ProxyError as exc:
        response = exc.response(errors.shape_of(request))  # rendered here so the page can read the error
    if not response.prepared:
        response.headers.update(_cors_headers(origin))
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keyring = request.app[KEYS]
    request[OWNER] = owner_of(None)
    request[KEY] = LOCAL
    if not keyring.enabled or request.path in OPEN_PATHS:
        return await handler(request)
    supplied = _supplied_key(request)
    key = keyring.authenticate(supplied) if supplied else None
    if key is None:
        raise errors.AuthenticationFailed(
            "Missing or invalid API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`) with a key from "
            "the keys file or `api_keys`"
        )
    request[KEY] = key
    request[ACCESS].key_name = key.name
    request[OWNER] = owner_of(supplied)  # the same owner whichever header carried the key
    return await handler(request)


def _supplied_key(request: web.Request) -> str | None:
    """The key a request carries: `Authorization: Bearer` (OpenAI's clients), else `x-api-key` (Anthropic's)."""
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip()
    return request.headers.get("x-api-key", "").strip() or None
