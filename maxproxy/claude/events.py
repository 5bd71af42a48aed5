"""The CLI's stream-json output lines as msgspec Structs, and the one place where its open set of line types becomes
the closed set maxproxy consumes. Every struct tolerates unknown fields; a line of an unknown `type` is skipped (the
CLI adds types often); a line that is not JSON is a protocol error (the process is broken).
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from msgspec import Struct

log = structlog.get_logger("maxproxy.events")


class Usage(Struct, frozen=True):
    # The CLI writes null for some counters at times; None reads as 0.
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0


class Block(Struct, frozen=True):
    """A content block: text, thinking, tool_use, tool_result, image, ... (only the fields maxproxy reads)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    is_error: bool | None = None


class Delta(Struct, frozen=True):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None  # a thinking block's, in its `signature_delta`
    stop_reason: str | None = None


class Message(Struct, frozen=True):
    id: str = ""
    model: str = ""
    content: list[Block] | str = []
    usage: Usage | None = None
    stop_reason: str | None = None


class SseEvent(Struct, frozen=True):
    """One Anthropic streaming event, as the CLI forwards it in `stream_event.event`."""

    type: str
    index: int | None = None
    delta: Delta | None = None
    content_block: Block | None = None
    message: Message | None = None
    usage: Usage | None = None


class Abandoned(Struct, frozen=True):
    api_message_id: str
    from_block_index: int = 0


# --- the line types ----------------------------------------------------------------------------------------------


class StreamEvent(Struct, frozen=True, tag="stream_event"):
    event: SseEvent
    api_message_id: str | None = None
    parent_tool_use_id: str | None = None
    # On a synthetic message_stop after the upstream stream broke: these blocks were abandoned and the answer is
    # being retried from scratch (protocol note §2.4).
    abandoned_blocks: Abandoned | None = None


class Assistant(Struct, frozen=True, tag="assistant"):
    message: Message
    parent_tool_use_id: str | None = None
    error: str | None = None  # on the synthetic message of an API error: rate_limit, authentication_failed, ...


class User(Struct, frozen=True, tag="user"):
    message: Message
    parent_tool_use_id: str | None = None


class System(Struct, frozen=True, tag="system"):
    subtype: str = ""
    session_id: str | None = None
    model: str | None = None
    apiKeySource: str | None = None  # noqa: N815 (the CLI's spelling)
    claude_code_version: str | None = None
    permissionMode: str | None = None  # noqa: N815
    # api_retry
    attempt: int | None = None
    max_retries: int | None = None
    retry_delay_ms: float | None = None
    error_status: int | None = None
    error: str | None = None


class Result(Struct, frozen=True, tag="result"):
    subtype: str = ""
    is_error: bool = False
    result: str | None = None
    stop_reason: str | None = None
    terminal_reason: str | None = None
    api_error_status: int | None = None
    api_error: str | None = None  # e.g. "usage_limit_reached" (the plan's limit), "connection_failed"
    errors: list[str] | None = None
    usage: Usage | None = None
    num_turns: int | None = 0
    session_id: str | None = None
    total_cost_usd: float | None = None
    duration_ms: float | None = None


class WindowInfo(Struct, frozen=True):
    """One plan window in a `rate_limit_event` (`unifiedWindows`): utilization is a fraction (0.97 = 97%)."""

    utilization: float | None = None
    resetsAt: float | None = None  # noqa: N815
    status: str | None = None


class RateLimitInfo(Struct, frozen=True):
    status: str | None = None
    resetsAt: float | None = None  # noqa: N815
    rateLimitType: str | None = None  # noqa: N815
    isUsingOverage: bool | None = None  # noqa: N815
    overageStatus: str | None = None  # noqa: N815
    overageDisabledReason: str | None = None  # noqa: N815
    overageInUse: bool | None = None  # noqa: N815
    unifiedWindows: dict[str, WindowInfo] | None = None  # noqa: N815


class RateLimit(Struct, frozen=True, tag="rate_limit_event"):
    rate_limit_info: RateLimitInfo = RateLimitInfo()


class ControlResponseBody(Struct, frozen=True):
    subtype: str
    request_id: str
    response: dict[str, Any] | None = None
    error: str | None = None


class ControlResponse(Struct, frozen=True, tag="control_response"):
    response: ControlResponseBody


class ControlRequestBody(Struct, frozen=True):
    subtype: str = ""
    server_name: str | None = None  # mcp_message
    message: Any = None  # mcp_message: one JSON-RPC message


class ControlRequest(Struct, frozen=True, tag="control_request"):
    request_id: str
    request: ControlRequestBody


class ToolCall(Struct, frozen=True):
    """Not a CLI line: the worker reports it when the CLI calls one of the client's tools (`claude.mcp`)."""

    tool_use_id: str  # the model's tool_use block
    id: str  # the id the client sees
    name: str
    arguments: str  # JSON
    refusal: str | None = None  # why maxproxy answered the call itself with an error (the client never sees it)


Event = StreamEvent | Assistant | User | System | Result | RateLimit | ControlResponse | ControlRequest
TurnEvent = Event | ToolCall  # what a turn's consumer sees


class _Envelope(Struct):
    type: Any = None


_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_peek = msgspec.json.Decoder(_Envelope)
_KNOWN = frozenset(
    {"stream_event", "assistant", "user", "system", "result", "rate_limit_event", "control_response", "control_request"}
)


class ProtocolError(Exception):
    """The CLI wrote a line that is not a JSON object, or a result maxproxy cannot read."""


def decode(line: bytes) -> Event | None:
    """One stdout line → an Event, or None for a line maxproxy does not use (unknown type, keep_alive, ...)."""
    try:
        return _decoder.decode(line)
    except msgspec.ValidationError as exc:
        try:
            kind = _peek.decode(line).type
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise ProtocolError(f"not a JSON object: {line[:120]!r}") from None
        if kind not in _KNOWN:
            return None
        if kind == "result":
            # Without its result a turn cannot end; a result we cannot read is fatal for the turn.
            raise ProtocolError(f"unreadable result line: {exc}") from None
        log.warning("cli_line_skipped", line_type=kind, reason=str(exc))
        return None
    except msgspec.DecodeError:
        raise ProtocolError(f"not JSON: {line[:120]!r}") from None


_line_encoder = msgspec.json.Encoder()


def encode_line(obj: Any) -> bytes:
    """One stdin line; built from Python objects only, so it is always valid JSON (a bad line kills the CLI)."""
    return _line_encoder.encode(obj) + b"\n"
