"""OpenAI Chat Completions on the wire: the request (`ChatRequest`, decoded and type-checked in one pass; unknown keys
are ignored, as real clients send many), its translation into a `TurnRequest`, and the turn core's neutral events
turned into the answer — one `chat.completion` JSON, or `chat.completion.chunk` SSE payloads (`Chunks`: the fixed head
encoded once per response, only deltas per chunk) ending with the finish chunk, the usage chunk when asked for, or a
`{"error": ...}` payload when the turn failed after the stream began. Fields maxproxy accepts but cannot honour
default to UNSET, so the answer can name the ones a client actually sent (`x-maxproxy-ignored-params`).
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from maxproxy import errors
from maxproxy.turns import structured
from maxproxy.turns.core import Event, Outcome, ReasoningDelta, TextDelta, ToolCallEvent
from maxproxy.turns.messages import (
    AssistantMessage,
    Effort,
    FunctionCall,
    Message,
    OutputSchema,
    ToolCall,
    TurnRequest,
    Usage,
)
from maxproxy.wire import decoding
from maxproxy.wire.decoding import TokenLimit, too_deep, too_deep_arguments

# --- request -----------------------------------------------------------------------------------------------------

Penalty = Annotated[float, Meta(ge=-2, le=2)]


class StreamOptions(Struct):
    include_usage: bool = False


class ChatRequest(Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    # Accepted, checked for type and range, and ignored (the CLI has no way to pass them); named in a response header.
    temperature: Annotated[float, Meta(ge=0, le=2)] | UnsetType | None = UNSET
    top_p: Annotated[float, Meta(ge=0, le=1)] | UnsetType | None = UNSET
    stop: str | list[str] | UnsetType | None = UNSET
    presence_penalty: Penalty | UnsetType | None = UNSET
    frequency_penalty: Penalty | UnsetType | None = UNSET
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | UnsetType | None = UNSET
    logprobs: bool | UnsetType | None = UNSET
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | UnsetType | None = UNSET
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET
    # Honoured: structured outputs (`output_schema`; checked JSON answers).
    response_format: dict[str, Any] | None = None
    # Honoured: the client's tools (checked in `tools.toolset`).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Accepted and used later (sessions, keys); harmless now.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    store: bool | None = None
    # Honoured: the CLI's `--effort`.
    reasoning_effort: Effort | None = None

    @property
    def token_limit(self) -> int | None:
        # LangChain renames one to the other; they mean the same limit.
        return self.max_completion_tokens or self.max_tokens

    def deep_field(self) -> str | None:
        """The first free-form field (or tool call's `arguments`) that nests deeper than `MAX_DEPTH`, as a param."""
        fields: list[tuple[str, Any]] = [
            ("metadata", self.metadata),
            ("tool_choice", self.tool_choice),
            ("response_format", self.response_format),
            *((f"tools[{i}]", tool) for i, tool in enumerate(self.tools or [])),
        ]
        for where, value in fields:
            if too_deep(value):
                return where
        for i, message in enumerate(self.messages):
            if not isinstance(message, AssistantMessage):
                continue
            for j, call in enumerate(message.tool_calls or []):
                if too_deep_arguments(call.function.arguments):
                    return f"messages[{i}].tool_calls[{j}].function.arguments"
        return None


IGNORED_FIELDS = (
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "service_tier",
)


def ignored_fields(request: ChatRequest) -> list[str]:
    return [name for name in IGNORED_FIELDS if getattr(request, name) not in (UNSET, None)]


request_decoder = msgspec.json.Decoder(ChatRequest)


def decode(body: bytes) -> ChatRequest:
    """The request, or a 400 naming what is wrong (`decoding.decode`; free-form fields nested too deep, too)."""
    chat = decoding.decode(request_decoder, body)
    decoding.too_deep_field(chat.deep_field())
    return chat


def to_turn(chat: ChatRequest) -> TurnRequest:
    metadata = chat.metadata or {}
    conversation_id = metadata.get("conversation_id")
    return TurnRequest(
        model=chat.model,
        messages=chat.messages,
        stream=chat.stream,
        tools=chat.tools,
        tool_choice=chat.tool_choice,
        parallel_tool_calls=chat.parallel_tool_calls,
        max_output_tokens=chat.token_limit,
        limit_params=tuple(
            (name, limit)
            for name, limit in (("max_tokens", chat.max_tokens), ("max_completion_tokens", chat.max_completion_tokens))
            if limit is not None
        ),
        choices=chat.n,
        effort=chat.reasoning_effort,
        output_schema=output_schema(chat.response_format),
        conversation_id=conversation_id if isinstance(conversation_id, str) else None,
        prompt_cache_key=chat.prompt_cache_key,
        user=chat.user,
    )


def output_schema(response_format: dict[str, Any] | None) -> OutputSchema | None:
    """`response_format` as the neutral structured output (None for `text`), or a 400 naming the field."""
    kind = (response_format or {}).get("type")
    if response_format is None or kind == "text":
        return None
    if kind == "json_object":
        return structured.JSON_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise errors.InvalidRequest(
                "response_format.json_schema must be an object with name and schema",
                param="response_format.json_schema",
            )
        return structured.json_schema(spec, "response_format.json_schema")
    raise errors.InvalidRequest(
        f"response_format.type must be text, json_object or json_schema, not {kind!r}", param="response_format.type"
    )


# --- response ----------------------------------------------------------------------------------------------------


class ResponseMessage(Struct):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ToolCall] | UnsetType = UNSET  # UNSET is left out of the JSON
    refusal: None = None
    reasoning_content: str | UnsetType = UNSET  # the model's thinking, only when it ran (OpenClaw, LiteLLM read it)


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Choice(Struct):
    message: ResponseMessage
    finish_reason: FinishReason
    index: int = 0
    logprobs: None = None


class PromptDetails(Struct):
    cached_tokens: int = 0


class ChatUsage(Struct):
    """OpenAI's usage object (the neutral `Usage` carries more than chat shows, e.g. cache writes)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails

    @classmethod
    def of(cls, usage: Usage) -> ChatUsage:
        details = PromptDetails(cached_tokens=usage.prompt_tokens_details.cached_tokens)
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, details)


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
    object: str = "chat.completion"
    system_fingerprint: None = None


encoder = msgspec.json.Encoder()


def new_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18).replace("-", "").replace("_", "")[:24]


class Chunks:
    """`chat.completion.chunk` payloads as bytes; the fixed head is encoded once per response, only deltas per chunk."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._head = (
            b'{"id":'
            + encoder.encode(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + encoder.encode(model)
            + b',"system_fingerprint":null,"choices":'
        )

    def role(self) -> bytes:
        return (
            self._head
            + b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
        )

    def content(self, text: str) -> bytes:
        return self._delta(b"content", text)

    def reasoning(self, text: str) -> bytes:
        return self._delta(b"reasoning_content", text)

    def _delta(self, field: bytes, text: str) -> bytes:
        return (
            self._head
            + b'[{"index":0,"delta":{"'
            + field
            + b'":'
            + encoder.encode(text)
            + b'},"logprobs":null,"finish_reason":null}]}'
        )

    def tool_call(self, call: ToolCallEvent) -> tuple[bytes, bytes]:
        """A tool call as the SDKs accumulate it: index, id, type and name first, then the arguments."""
        tail = b'}]},"logprobs":null,"finish_reason":null}]}'
        opening = b'[{"index":0,"delta":{"tool_calls":[{"index":' + str(call.index).encode()
        named = (
            b',"id":'
            + encoder.encode(call.id)
            + b',"type":"function","function":{"name":'
            + encoder.encode(call.name)
            + b',"arguments":""}'
        )
        arguments = b',"function":{"arguments":' + encoder.encode(call.arguments) + b"}"
        return self._head + opening + named + tail, self._head + opening + arguments + tail

    def finish(self, reason: FinishReason) -> bytes:
        return self._head + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"' + reason.encode() + b'"}]}'

    def usage(self, usage: Usage) -> bytes:
        return self._head + b'[],"usage":' + encoder.encode(ChatUsage.of(usage)) + b"}"


def message(outcome: Outcome) -> AssistantMessage:
    """The answer as the client will send it back in its next request's history."""
    calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in outcome.calls]
    return AssistantMessage(content=outcome.text or None, tool_calls=calls or None)


def completion(completion_id: str, created: int, model: str, outcome: Outcome) -> bytes:
    if outcome.finish_reason != "tool_calls":
        response = ResponseMessage(content=outcome.text)
    else:
        response = ResponseMessage(content=outcome.text or None, tool_calls=message(outcome).tool_calls or [])
    if outcome.reasoning:
        response.reasoning_content = outcome.reasoning
    body = ChatCompletion(
        id=completion_id,
        created=created,
        model=model,
        choices=[Choice(message=response, finish_reason=outcome.finish_reason)],
        usage=ChatUsage.of(outcome.usage),
    )
    return msgspec.json.encode(body)


class Answer:
    """One chat completion's rendering of the core's events: its headers, its SSE payloads, or its JSON body."""

    content_type = "application/json"
    done: bytes | None = b"[DONE]"  # the stream's last payload
    framed = False  # payloads are `data:` lines

    def __init__(self, chat: ChatRequest) -> None:
        self.chat = chat
        self.id = new_id()
        self.created = int(time.time())
        self.chunks = Chunks(self.id, self.created, chat.model)

    def headers(self, turn: dict[str, str]) -> dict[str, str]:
        headers = dict(turn)
        if ignored := ignored_fields(self.chat):
            headers["x-maxproxy-ignored-params"] = ",".join(ignored)
        return headers

    def opening(self) -> list[bytes]:
        return [self.chunks.role()]

    def event(self, event: Event) -> tuple[bytes, ...]:
        if isinstance(event, TextDelta):
            return (self.chunks.content(event.text),)
        if isinstance(event, ReasoningDelta):
            return (self.chunks.reasoning(event.text),)
        if isinstance(event, ToolCallEvent):
            return self.chunks.tool_call(event)
        if isinstance(event, Outcome):
            return self.closing(event)
        return ()

    def closing(self, outcome: Outcome) -> tuple[bytes, ...]:
        if outcome.error is not None:
            return (outcome.error.body(),)
        finish = self.chunks.finish(outcome.finish_reason)
        if self.chat.stream_options is not None and self.chat.stream_options.include_usage:
            return finish, self.chunks.usage(outcome.usage)
        return (finish,)

    def body(self, outcome: Outcome) -> bytes:
        return completion(self.id, self.created, self.chat.model, outcome)
