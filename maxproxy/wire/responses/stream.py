"""The Responses output: a `ResponseStream` fed neutral turn events (text, thinking, tool calls, usage, finish,
error) produces the SSE events the SDKs' stream helpers and Codex need, in their order, and keeps the response object
whose final form is the non-streaming answer. Pure: no I/O.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import msgspec

from maxproxy import errors
from maxproxy.turns.core import Event as TurnEvent
from maxproxy.turns.core import Keepalive, Outcome, ReasoningDelta, ReasoningSignature, TextDelta, ToolCallEvent
from maxproxy.wire.responses.request import ResponsesRequest
from maxproxy.wire.responses.translation import Translated

Event = tuple[str, bytes]  # (SSE event name, JSON payload)
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]

_encoder = msgspec.json.Encoder()
# `ResponseError.code` is a closed set in the SDK: maxproxy's own code goes into the message and `type`.
_FAILED_CODES = {429: "rate_limit_exceeded"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24 if prefix == 'resp' else 16)}"


def sse(event: Event) -> bytes:
    """One event as SSE bytes (`event:` and `data:` lines)."""
    return b"event: " + event[0].encode() + b"\ndata: " + event[1] + b"\n\n"


def error_body(exc: errors.ProxyError) -> bytes:
    """An error before any output, in the OpenAI shape (`{"error": {message, type, param, code}}`)."""
    return exc.body()


class ResponseStream:
    """One response: fed neutral turn events, it returns the SSE events each adds (empty lists where none is due) and
    keeps the response object, whose final form `response()` gives (what a non-streaming answer sends).

    Items open and close as the turn goes: text opens a `message` item, thinking a `reasoning` item (its summary),
    each tool call is one whole `function_call` item; a new kind of event closes the open item first, so each item's
    `output_item.added` comes before its deltas and its `output_item.done` before the next item's `added`."""

    def __init__(
        self,
        model: str,
        *,
        echo: dict[str, Any] | None = None,
        namespaces: dict[str, str] | None = None,
        response_id: str | None = None,
        created_at: int | None = None,
    ) -> None:
        self.id = response_id or new_id("resp")
        self.model = model
        self.created_at = created_at if created_at is not None else int(time.time())
        self.echo = dict(echo or _DEFAULT_ECHO)
        self.namespaces = namespaces or {}
        self.output: list[dict[str, Any]] = []
        self.status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
        self.usage_: dict[str, Any] | None = None
        self.incomplete_details: dict[str, Any] | None = None
        self.error_: dict[str, Any] | None = None
        self._sequence = 0
        self._started = False
        self._open: dict[str, Any] | None = None  # the item that takes deltas
        self._text: list[str] = []

    @classmethod
    def for_request(cls, request: ResponsesRequest, translated: Translated, **kwargs: Any) -> ResponseStream:
        return cls(request.model, echo=translated.echo, namespaces=translated.namespaces, **kwargs)

    @property
    def ended(self) -> bool:
        return self.status != "in_progress"

    # The events a turn feeds in.

    def start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def text(self, delta: str) -> list[Event]:
        if not delta or self.ended:
            return []
        events = self.start()
        if self._open is None or self._open["type"] != "message":
            events += self._close()
            opened: dict[str, Any] = {
                "id": new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events += self._add(opened)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self._event("response.content_part.added", **self._at(opened), content_index=0, part=part))
            opened["content"].append(dict(part))
        item = self._open
        assert item is not None
        self._text.append(delta)
        events.append(
            self._event("response.output_text.delta", **self._at(item), content_index=0, delta=delta, logprobs=[])
        )
        return events

    def reasoning(self, delta: str) -> list[Event]:
        if not delta or self.ended:
            return []
        events = self.start()
        if self._open is None or self._open["type"] != "reasoning":
            events += self._close()
            opened: dict[str, Any] = {
                "id": new_id("rs"),
                "type": "reasoning",
                "summary": [],
                "status": "in_progress",
            }
            events += self._add(opened)
            part = {"type": "summary_text", "text": ""}
            events.append(
                self._event("response.reasoning_summary_part.added", **self._at(opened), summary_index=0, part=part)
            )
        item = self._open
        assert item is not None
        self._text.append(delta)
        events.append(
            self._event("response.reasoning_summary_text.delta", **self._at(item), summary_index=0, delta=delta)
        )
        return events

    def tool_call(self, call_id: str, name: str, arguments: str) -> list[Event]:
        """A whole call (maxproxy checks a call before the client may see it, so it never streams in pieces)."""
        if self.ended:
            return []
        events = self.start() + self._close()
        item: dict[str, Any] = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        if name in self.namespaces:
            item["namespace"] = self.namespaces[name]
        events += self._add(item)
        at = self._at(item)
        if arguments:
            events.append(self._event("response.function_call_arguments.delta", **at, delta=arguments))
        events.append(self._event("response.function_call_arguments.done", **at, name=name, arguments=arguments))
        item["arguments"] = arguments
        events += self._close()
        return events

    def usage(
        self,
        input_tokens: int,
        cached_tokens: int,
        output_tokens: int,
        reasoning_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> list[Event]:
        """The turn's usage; `input_tokens` counts every prompt token, cached (read) and cache-written ones included
        (OpenAI's meaning); the current SDK requires `cache_write_tokens`."""
        self.usage_ = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": cache_write_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        }
        return []

    def finish(self, reason: FinishReason) -> list[Event]:
        if self.ended:
            return []
        events = self.start()
        if reason in ("length", "content_filter"):
            events += self._close("incomplete")
            self.status = "incomplete"
            self.incomplete_details = {"reason": "max_output_tokens" if reason == "length" else "content_filter"}
            events.append(self._event("response.incomplete", response=self.response()))
        else:
            events += self._close()
            self.status = "completed"
            events.append(self._event("response.completed", response=self.response()))
        return events

    def error(self, status: int, type: str, code: str | None, message: str, param: str | None = None) -> list[Event]:
        """The turn failed after the stream opened: the open item ends incomplete and `response.failed` follows."""
        if self.ended:
            return []
        events = self.start() + self._close("incomplete")
        self.status = "failed"
        self.error_ = {
            "code": _FAILED_CODES.get(status, "server_error"),
            "message": f"{message} ({code})" if code else message,
            "type": type,
            "param": param,
        }
        events.append(self._event("response.failed", response=self.response()))
        return events

    def fail(self, exc: errors.ProxyError) -> list[Event]:
        return self.error(exc.status, exc.type, exc.code, exc.message, exc.param)

    def feed(self, event: TurnEvent) -> list[Event]:
        """The events one of the turn core's events adds (a keepalive adds none: the handler's SSE comment)."""
        if isinstance(event, TextDelta):
            return self.text(event.text)
        if isinstance(event, ReasoningDelta):
            return self.reasoning(event.text)
        if isinstance(event, ToolCallEvent):
            return self.tool_call(event.id, event.name, event.arguments)
        if isinstance(event, Keepalive | ReasoningSignature):  # a summary has no signature
            return []
        assert isinstance(event, Outcome)
        usage = event.usage
        self.usage(usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens)
        if event.error is not None:
            return self.fail(event.error)
        return self.finish(event.finish_reason)

    # The response object.

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.model,
            "output": [_copy(item) for item in self.output],
            "usage": self.usage_,
            "incomplete_details": self.incomplete_details,
            "error": self.error_,
            **self.echo,
        }

    def body(self) -> bytes:
        return _encoder.encode(self.response())

    # Internals.

    def _event(self, type: str, **fields: Any) -> Event:
        payload = {"type": type, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return type, _encoder.encode(payload)

    def _at(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"output_index": len(self.output) - 1, "item_id": item["id"]}

    def _add(self, item: dict[str, Any]) -> list[Event]:
        self.output.append(item)
        self._open = item
        self._text = []
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=_copy(item))]

    def _close(self, status: Literal["completed", "incomplete"] = "completed") -> list[Event]:
        item = self._open
        if item is None:
            return []
        self._open = None
        at = self._at(item)
        events: list[Event] = []
        text = "".join(self._text)
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            events.append(self._event("response.output_text.done", **at, content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", **at, content_index=0, part=part))
            item["content"] = [part]
        elif item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            events.append(self._event("response.reasoning_summary_text.done", **at, summary_index=0, text=text))
            events.append(self._event("response.reasoning_summary_part.done", **at, summary_index=0, part=part))
            item["summary"] = [part]
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=at["output_index"], item=_copy(item)))
        return events


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    copied = dict(item)
    for key in ("content", "summary"):
        if key in copied:
            copied[key] = [dict(part) for part in copied[key]]
    return copied


_DEFAULT_ECHO: dict[str, Any] = {
    "instructions": None,
    "tools": [],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "max_output_tokens": None,
    "previous_response_id": None,
    "store": True,
    "text": {"format": {"type": "text"}},
    "reasoning": {"effort": None, "summary": None},
    "metadata": {},
    "temperature": None,
    "top_p": None,
    "truncation": "disabled",
    "background": False,
}
