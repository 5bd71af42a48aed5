"""A fake Anthropic Messages API on 127.0.0.1 that the real Claude Code CLI talks to in tests and in
`make bench`.

Each test scripts the answers: `upstream.push(Reply(...))` queues the answer to the next `POST /v1/messages`; when the
queue is empty the default reply is used. A reply is streamed text (with per-delta delays), thinking, `tool_use`
blocks, an HTTP error (401/429/500/529, with headers such as `retry-after` or the subscription rate-limit headers), a
hang before the response headers, a hang mid-stream, or a connection dropped mid-stream. Every request the CLI made is
recorded (`upstream.requests`) so tests can assert exactly what reached the model. It also serves the plan-usage
endpoint the CLI asks for `get_usage` under a stored claude.ai login (`GET /api/oauth/usage`, reached through
`bench.tunnel`): `upstream.usage` is the body it answers (see `usage_body`), `usage_status` scripts an error, and each
such request is recorded apart, in `upstream.usage_requests`.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]
TUNNELED_HOST = "api.anthropic.com"  # the CLI's fixed host, reached only through `bench.tunnel`


@dataclass(frozen=True)
class Text:
    """A text block streamed as the given deltas."""

    deltas: tuple[str, ...]

    @classmethod
    def of(cls, text: str, *, pieces: int = 1) -> Text:
        size = max(1, -(-len(text) // pieces))
        return cls(tuple(text[i : i + size] for i in range(0, len(text), size)) or ("",))


@dataclass(frozen=True)
class Thinking:
    text: str


@dataclass(frozen=True)
class ToolUse:
    name: str
    input: JSON
    id: str = ""


Block = Text | Thinking | ToolUse


@dataclass(frozen=True)
class Reply:
    """One scripted answer to one `POST /v1/messages`."""

    blocks: tuple[Block, ...] = (Text(("Hello ", "from ", "fake ", "upstream!")),)
    stop_reason: str = "end_turn"
    delay: float = 0.0  # seconds between deltas
    input_tokens: int = 10
    output_tokens: int | None = None
    cache_read: int = 0
    cache_creation: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    # faults
    status: int = 200  # != 200: an error answer of this status
    error_type: str = ""
    error_message: str = ""
    hang_before_headers: bool = False
    hang_after_deltas: int | None = None  # stop sending (but keep the connection) after N deltas
    drop_after_deltas: int | None = None  # close the connection after N deltas

    @classmethod
    def text(cls, text: str, *, pieces: int = 1, **kw: Any) -> Reply:
        return cls(blocks=(Text.of(text, pieces=pieces),), **kw)

    @classmethod
    def error(cls, status: int, message: str = "", *, headers: dict[str, str] | None = None) -> Reply:
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            429: "rate_limit_error",
            500: "api_error",
            529: "overloaded_error",
        }
        return cls(
            status=status,
            error_type=kinds.get(status, "api_error"),
            error_message=message or f"fake error {status}",
            headers=tuple((headers or {}).items()),
        )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: JSON
    at: float = field(default_factory=time.monotonic)  # when the request arrived
    answered: float | None = None  # when the last byte of a streamed answer was written

    @property
    def messages(self) -> list[JSON]:
        return list(self.body.get("messages", []))

    def texts(self) -> list[str]:
        """Every text block of every message, in order (system-role entries included)."""
        out: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
                continue
            for block in content or []:
                if block.get("type") == "text":
                    out.append(block["text"])
        return out

    def system_text(self) -> str:
        system = self.body.get("system", "")
        if isinstance(system, str):
            return system
        return "\n".join(block.get("text", "") for block in system)


@dataclass
class UsageRequest:
    """One `GET /api/oauth/usage` as it arrived."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeUpstream:
    default: Reply = field(default_factory=Reply)
    responder: Callable[[Received], Reply | None] | None = None
    requests: list[Received] = field(default_factory=list)
    _queue: deque[Reply] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _hangs: set[asyncio.Event] = field(default_factory=set)
    url: str = ""
    # The plan-usage endpoint: the body it answers (None: every window null), or an error of `usage_status` (with
    # `usage_headers`), or no answer at all (`usage_hang`, until close).
    usage: JSON | None = None
    usage_status: int = 200
    usage_headers: dict[str, str] = field(default_factory=dict)
    usage_hang: bool = False
    usage_requests: list[UsageRequest] = field(default_factory=list)
    # What else the CLI asked its fixed host for through `bench.tunnel` (profile, feature flags, bootstrap), answered
    # 404 and kept out of `requests`.
    side_requests: list[Received] = field(default_factory=list)

    def push(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    @property
    def messages_requests(self) -> list[Received]:
        """The model calls (`POST /v1/messages` that stream), without probes and token counts."""
        return [r for r in self.requests if r.path == "/v1/messages" and r.body.get("stream")]

    async def start(self) -> str:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/api/oauth/usage", self._usage)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        for hang in self._hangs:
            hang.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- handlers -------------------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Received:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        received = Received(request.path, dict(request.headers), body)
        self.requests.append(received)
        return received

    async def _other(self, request: web.Request) -> web.Response:
        if request.host == TUNNELED_HOST:
            raw = await request.read()
            self.side_requests.append(
                Received(request.path_qs, dict(request.headers), {"raw": raw.decode(errors="replace")})
            )
        else:
            await self._record(request)
        return web.json_response({"type": "error", "error": {"type": "not_found_error", "message": "nope"}}, status=404)

    async def _usage(self, request: web.Request) -> web.Response:
        self.usage_requests.append(UsageRequest(request.path, dict(request.query), dict(request.headers)))
        if self.usage_hang:
            await self._hang()
        if self.usage_status != 200:
            kind = {429: "rate_limit_error", 401: "authentication_error"}.get(self.usage_status, "api_error")
            error = {"type": "error", "error": {"type": kind, "message": f"fake error {self.usage_status}"}}
            return web.json_response(error, status=self.usage_status, headers=self.usage_headers)
        return web.json_response(usage_body() if self.usage is None else self.usage, headers=self.usage_headers)

    async def _count_tokens(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"input_tokens": 10})

    def _next_reply(self, received: Received) -> Reply:
        if self.responder is not None:
            reply = self.responder(received)
            if reply is not None:
                return reply
        return self._queue.popleft() if self._queue else self.default

    async def _hang(self) -> None:
        hang = asyncio.Event()
        self._hangs.add(hang)
        try:
            await hang.wait()
        finally:
            self._hangs.discard(hang)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        body = received.body
        model = body.get("model", "claude")
        if not body.get("stream") and body.get("max_tokens") == 1:
            # The CLI's model probe (`set_model`): answered plainly, never from the script.
            return web.json_response(self._message_json(model, [{"type": "text", "text": "ok"}]))
        reply = self._next_reply(received)
        if reply.hang_before_headers:
            await self._hang()
        headers = dict(reply.headers)
        if reply.status != 200:
            error = {"type": "error", "error": {"type": reply.error_type, "message": reply.error_message}}
            return web.json_response(error, status=reply.status, headers=headers)
        if not body.get("stream"):
            # The CLI's non-streaming fallback after a broken or stalled stream: the same scripted answer, whole.
            content = [self._block_json(block, i, next(self._ids)) for i, block in enumerate(reply.blocks)]
            return web.json_response(self._message_json(model, content, reply=reply), headers=headers)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "request-id": "req_fake", **headers}
        )
        await response.prepare(request)
        await self._stream(request, response, reply, body.get("model", "claude"))
        received.answered = time.monotonic()
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, reply: Reply, model: str) -> None:
        n = next(self._ids)
        message = self._message_json(model, None, n=n, reply=reply)

        async def send(kind: str, data: JSON) -> None:
            await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        await send("message_start", {"type": "message_start", "message": message})
        deltas_sent = 0
        output_tokens = 0
        for index, block in enumerate(reply.blocks):
            if isinstance(block, Text):
                start: JSON = {"type": "text", "text": ""}
                pieces = [{"type": "text_delta", "text": d} for d in block.deltas]
            elif isinstance(block, Thinking):
                start = {"type": "thinking", "thinking": "", "signature": ""}
                pieces = [
                    {"type": "thinking_delta", "thinking": block.text},
                    {"type": "signature_delta", "signature": "c2lnbmF0dXJl"},
                ]
            else:
                start = {**self._block_json(block, index, n), "input": {}}
                pieces = [{"type": "input_json_delta", "partial_json": json.dumps(block.input)}]
            await send("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
            for piece in pieces:
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.hang_after_deltas is not None and deltas_sent >= reply.hang_after_deltas:
                    await self._hang()
                if reply.drop_after_deltas is not None and deltas_sent >= reply.drop_after_deltas:
                    await asyncio.sleep(0.2)  # let the client read what was sent before the connection breaks
                    assert request.transport is not None
                    request.transport.abort()
                    return
                await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": piece})
                deltas_sent += 1
                output_tokens += 1
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        usage = {"output_tokens": reply.output_tokens if reply.output_tokens is not None else output_tokens}
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        )
        await send("message_stop", {"type": "message_stop"})

    @staticmethod
    def _block_json(block: Block, index: int, n: int) -> JSON:
        if isinstance(block, Text):
            return {"type": "text", "text": "".join(block.deltas)}
        if isinstance(block, Thinking):
            return {"type": "thinking", "thinking": block.text, "signature": "c2lnbmF0dXJl"}
        return {
            "type": "tool_use",
            "id": block.id or f"toolu_fake_{n}_{index}",
            "name": block.name,
            "input": block.input,
        }

    @staticmethod
    def _message_json(model: str, content: list[JSON] | None, *, n: int = 0, reply: Reply | None = None) -> JSON:
        reply = reply or Reply()
        return {
            "id": f"msg_fake_{n}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content or [],
            "stop_reason": None if content is None else reply.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": reply.input_tokens,
                "output_tokens": 1,
                "cache_creation_input_tokens": reply.cache_creation,
                "cache_read_input_tokens": reply.cache_read,
            },
        }


def plan_headers(
    five_hour: float, seven_day: float = 0.41, *, overage_in_use: bool = False
) -> tuple[tuple[str, str], ...]:
    """An allowed answer's subscription headers at these utilizations (fractions), the windows resetting in 1 h and 3
    days, for `Reply(headers=...)`; the CLI turns them into a `rate_limit_event` with `unifiedWindows` (measured)."""
    now = int(time.time())
    warning = "allowed_warning" if five_hour >= 0.9 else "allowed"
    headers = {
        "anthropic-ratelimit-unified-status": warning,
        "anthropic-ratelimit-unified-reset": str(now + 3600),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-utilization": str(five_hour),
        "anthropic-ratelimit-unified-5h-reset": str(now + 3600),
        "anthropic-ratelimit-unified-5h-status": warning,
        "anthropic-ratelimit-unified-7d-utilization": str(seven_day),
        "anthropic-ratelimit-unified-7d-reset": str(now + 3 * 86400),
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-overage-status": "allowed",
        "anthropic-ratelimit-unified-overage-in-use": "true" if overage_in_use else "false",
    }
    return tuple(headers.items())


def plan_limit(reset_in: float, *, overage: bool = False) -> dict[str, str]:
    """The subscription rate-limit headers of an upstream answer (protocol note §13)."""
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": str(int(time.time() + reset_in)),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-overage-status": "allowed" if overage else "rejected",
    }
    if overage:
        headers["anthropic-ratelimit-unified-overage-in-use"] = "true"
    return headers


Window = tuple[float, float]  # (utilization in percent 0-100, resets_at as epoch seconds)


def usage_body(
    *,
    five_hour: Window | None = None,
    seven_day: Window | None = None,
    seven_day_opus: Window | None = None,
    seven_day_sonnet: Window | None = None,
    extra_usage: JSON | None = None,
) -> JSON:
    """A plan-usage endpoint body: each window `{utilization, resets_at}` (percent, ISO 8601) or null. The pinned CLI
    passes such a body through as `get_usage`'s `rate_limits` (one with none of these keys it calls an in-band
    error)."""

    def window(value: Window | None) -> JSON | None:
        if value is None:
            return None
        utilization, resets_at = value
        stamp = datetime.datetime.fromtimestamp(resets_at, datetime.UTC).isoformat().replace("+00:00", "Z")
        return {"utilization": utilization, "resets_at": stamp}

    return {
        "five_hour": window(five_hour),
        "seven_day": window(seven_day),
        "seven_day_oauth_apps": None,
        "seven_day_opus": window(seven_day_opus),
        "seven_day_sonnet": window(seven_day_sonnet),
        "extra_usage": extra_usage,
    }
