"""The exception tree: every error maxproxy answers with is a `ProxyError` carrying its HTTP status, the OpenAI
error `type`, a `code` and, where a request field is at fault, a `param`. One middleware renders them all as
`{"error": {"message", "type", "param", "code"}}` — or, for the Messages API's paths (`shape_of`), Anthropic's
`{"type": "error", "error": {"type", "message"}}` with Anthropic's type for the status; aiohttp's own HTTP errors (404,
405, 413) are converted the same way, and anything unexpected becomes a 500 without a traceback in the body (the
traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Literal

import msgspec
import structlog
from aiohttp import web

log = structlog.get_logger("maxproxy.errors")


class ProxyError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.extra_headers = dict(headers or {})  # e.g. the caller's x-ratelimit-* state

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def body(self) -> bytes:
        return _encoder.encode(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )

    @property
    def anthropic_type(self) -> str:
        """The error's type in Anthropic's set, from its status (what the Anthropic SDKs and Claude Code read)."""
        return _ANTHROPIC_TYPES.get(self.status) or ("api_error" if self.status >= 500 else "invalid_request_error")

    def anthropic_body(self) -> bytes:
        return _encoder.encode({"type": "error", "error": {"type": self.anthropic_type, "message": self.message}})

    def response(self, shape: Shape = "openai") -> web.Response:
        body = self.anthropic_body() if shape == "anthropic" else self.body()
        return web.Response(body=body, status=self.status, content_type="application/json", headers=self.headers())


Shape = Literal["openai", "anthropic"]  # whose error body a request gets
# Anthropic's error types by status (503 and 504 are its `api_error`; its own 529 is `overloaded_error`).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
ANTHROPIC_PATH = "/v1/messages"


def shape_of(request: web.BaseRequest) -> Shape:
    """Anthropic's error shape for the Messages API (`/v1/messages` and everything under it), and for the model list
    when an Anthropic SDK asks (it sends `anthropic-version`); else OpenAI's."""
    path = request.path
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "anthropic" if "anthropic-version" in request.headers else "openai"
    return "anthropic" if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/") else "openai"


# --- the client's fault (4xx) -------------------------------------------------------------------------------------


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ProxyError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ExtraUsageRequired(Forbidden):
    """The upstream answers only from paid extra usage (or refuses third-party use): not spent on the user's behalf."""

    code = "extra_usage_required"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


# --- the CLI's or the upstream's fault (5xx) ---------------------------------------------------------------------


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamAuthError(UpstreamError):
    code = "cli_authentication_failed"


class CLIFailed(UpstreamError):
    """The CLI process died, wrote garbage, or ended a turn in a way maxproxy cannot turn into an answer."""

    code = "cli_failed"


class InvalidStructuredOutput(UpstreamError):
    """The model's answer was not JSON for the request's response format, also after the retries it was given: the
    answer cannot be given (the client gets this, never the invalid text)."""

    code = "invalid_structured_output"


class Unavailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class Overloaded(ProxyError):
    """The upstream's own 529, passed on as Anthropic answers it (the SDKs treat it as a retryable 5xx)."""

    status = 529
    type = "overloaded_error"
    code = "upstream_overloaded"


class CLIUnavailable(Unavailable):
    code = "cli_unavailable"


class CLINotLoggedIn(Unavailable):
    """The CLI has no login (no subscription token, no API key): nothing can be answered until it is logged in."""

    code = "cli_not_logged_in"

    @classmethod
    def of(cls, cli_path: str) -> CLINotLoggedIn:
        return cls(f"The Claude Code CLI is not logged in: {login_fix(cli_path)}", retry_after=30)


def login_fix(cli_path: str) -> str:
    """How to log the CLI in, in the same words for `maxproxy doctor`, `/health` and the 503 answer."""
    return f"run `{cli_path} auth login` as the user maxproxy runs as (HOME={Path.home()})"


class Timeout(ProxyError):
    status = 504
    type = "timeout_error"
    code = "timeout"


_encoder = msgspec.json.Encoder()

_HTTP_ERRORS: dict[int, type[ProxyError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def from_http_exception(exc: web.HTTPException) -> ProxyError:
    kind = _HTTP_ERRORS.get(exc.status)
    if kind is not None:
        message = {
            404: "Unknown path; see GET /v1/models and POST /v1/chat/completions",
            405: "Method not allowed",
            413: "Request body is too large",
        }[exc.status]
        return kind(message)
    return HTTPStatusError(exc.status, exc.reason or "HTTP error")


class HTTPStatusError(ProxyError):
    """Any other HTTP error aiohttp raises (e.g. 400 for a bad request line, 431 for huge headers): its status and
    type are fixed when it is made, from aiohttp's own status, and never changed after."""

    code = None

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "server_error"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    shape = shape_of(request)
    try:
        return await handler(request)
    except ProxyError as exc:
        return exc.response(shape)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc).response(shape)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return ProxyError("Internal error; see the server log").response(shape)
