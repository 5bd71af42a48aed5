"""The Messages answer: a `MessageStream` fed the turn core's neutral events produces Anthropic's SSE events in the
order the SDKs accumulate them (`message_start`; per block `content_block_start`, its deltas, `content_block_stop`;
`message_delta` with the stop reason and the usage; `message_stop`; `ping` while the model is silent; `error` when the
turn failed after the stream opened), and the whole `message` object a non-streaming answer sends. Pure: no I/O.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

from maxproxy import errors
from maxproxy.turns.core import Event as TurnEvent
from maxproxy.turns.core import Keepalive, Outcome, ReasoningDelta, ReasoningSignature, TextDelta, ToolCallEvent
from maxproxy.turns.messages import Usage

_encoder = msgspec.json.Encoder()
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def new_id() -> str:
    return "msg_" + secrets.token_hex(12)


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode({"type": kind, **payload}) + b"\n\n"


def usage(used: Usage) -> dict[str, int]:
    """Anthropic's usage: its `input_tokens` leaves out the cached prompt tokens, read and written, which the
    neutral `prompt_tokens` (OpenAI's meaning) counts."""
    details = used.prompt_tokens_details
    cached, created = details.cached_tokens, details.cache_creation_tokens
    return {
        "input_tokens": max(0, used.prompt_tokens - cached - created),
        "output_tokens": used.completion_tokens,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": cached,
    }


def error_event(exc: errors.ProxyError) -> bytes:
    return b"event: error\ndata: " + exc.anthropic_body() + b"\n\n"


class MessageStream:
    """One answer. Thinking shows only when the client asked for it (`thinking`), with its text left out when it
    asked for that (`omit_thinking`); each tool call is one whole `tool_use` block (maxproxy checks a call before the
    client may see it). A text block is written as it came: the texts of several blocks, joined, are the answer."""

    def __init__(self, model: str, *, thinking: bool = False, omit_thinking: bool = False) -> None:
        self.id = new_id()
        self.model = model
        self.thinking = thinking
        self.omit_thinking = omit_thinking
        self.content: list[dict[str, Any]] = []  # the blocks written so far
        self._open: dict[str, Any] | None = None  # the block that takes deltas

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(Usage()),  # known at the end: `message_delta` carries the turn's
        }
        return sse("message_start", {"message": message})

    def feed(self, event: TurnEvent) -> list[bytes]:
        if isinstance(event, TextDelta):
            return self.text(event.text)
        if isinstance(event, ReasoningDelta):
            return self.reasoning(event.text)
        if isinstance(event, ReasoningSignature):
            return self.signature(event.signature)
        if isinstance(event, ToolCallEvent):
            return self.tool_use(event.id, event.name, event.arguments)
        if isinstance(event, Keepalive):
            return [sse("ping", {})]
        assert isinstance(event, Outcome)
        if event.error is not None:
            return [*self._close(), error_event(event.error)]
        return self.finish(event)

    def text(self, delta: str) -> list[bytes]:
        if not delta:
            return []
        frames = self._opened("text", {"type": "text", "text": ""})
        assert self._open is not None
        self._open["text"] += delta
        return [*frames, self._delta({"type": "text_delta", "text": delta})]

    def reasoning(self, delta: str) -> list[bytes]:
        if not delta or not self.thinking:
            return []
        frames = self._opened("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if self.omit_thinking:
            return frames
        assert self._open is not None
        self._open["thinking"] += delta
        return [*frames, self._delta({"type": "thinking_delta", "thinking": delta})]

    def signature(self, signature: str) -> list[bytes]:
        if self._open is None or self._open["type"] != "thinking":
            return []
        self._open["signature"] = signature
        return [self._delta({"type": "signature_delta", "signature": signature}), *self._close()]

    def tool_use(self, call_id: str, name: str, arguments: str) -> list[bytes]:
        frames = self._opened("tool_use", {"type": "tool_use", "id": call_id, "name": name, "input": {}}, new=True)
        assert self._open is not None
        self._open["input"] = _input(arguments)
        frames.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return [*frames, *self._close()]

    def finish(self, outcome: Outcome) -> list[bytes]:
        frames = self._close()
        if not any(block["type"] in ("text", "tool_use") for block in self.content):
            frames += [*self._opened("text", {"type": "text", "text": ""}), *self._close()]  # `content[0].text`
        delta = {"stop_reason": STOP_REASONS[outcome.finish_reason], "stop_sequence": None}
        frames.append(sse("message_delta", {"delta": delta, "usage": usage(outcome.usage)}))
        frames.append(sse("message_stop", {}))
        return frames

    def message(self, outcome: Outcome) -> dict[str, Any]:
        """The whole answer (a non-streaming one), from its outcome: thinking, text, then the calls."""
        if self.thinking:
            for thought, signature in outcome.thoughts:
                text = "" if self.omit_thinking else thought
                self.content.append({"type": "thinking", "thinking": text, "signature": signature})
        if outcome.text or not outcome.calls:
            self.content.append({"type": "text", "text": outcome.text})
        for call in outcome.calls:
            self.content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)})
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content,
            "stop_reason": STOP_REASONS[outcome.finish_reason],
            "stop_sequence": None,
            "usage": usage(outcome.usage),
        }

    # Internals.

    def _opened(self, kind: str, block: dict[str, Any], *, new: bool = False) -> list[bytes]:
        """The frames that make a block of `kind` the open one (none when it is already)."""
        if self._open is not None and self._open["type"] == kind and not new:
            return []
        frames = self._close()
        self._open = block
        self.content.append(block)
        start = sse("content_block_start", {"index": len(self.content) - 1, "content_block": dict(block)})
        return [*frames, start]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"index": len(self.content) - 1, "delta": delta})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse("content_block_stop", {"index": len(self.content) - 1})]


def _input(arguments: str) -> Any:
    """A call's arguments as the object `tool_use.input` is (maxproxy hands on calls whose arguments are one)."""
    try:
        value = msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}
