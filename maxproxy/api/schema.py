"""The OpenAI chat wire format as msgspec Structs: the request (decoded and type-checked in one pass; unknown keys
are ignored, as real clients send many) and the response shapes maxproxy writes (completion, chunk, model list).
Fields maxproxy accepts but cannot honour default to UNSET, so the handler can name the ones a client actually sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# --- request -----------------------------------------------------------------------------------------------------

# Every number is bounded to what it can mean: OpenAI's ranges, and for the output limit the CLI's own maximum (the
# model's lower one is checked in `prompt.build`). Free-form JSON (metadata, schemas, tool arguments) may nest
# `MAX_DEPTH` levels: deeper would exhaust the recursion of the decoder or of the schema checks further on.
CLI_MAX_OUTPUT_TOKENS = 128_000  # "Claude's response exceeded the 128000 output token maximum" (the CLI)
MAX_DEPTH = 64
TokenLimit = Annotated[int, Meta(ge=1, le=CLI_MAX_OUTPUT_TOKENS)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]


class TextPart(Struct, tag="text"):
    text: str


class InputTextPart(Struct, tag="input_text"):
    text: str


class ImageURL(Struct):
    url: str
    detail: str | None = None


class ImagePart(Struct, tag="image_url"):
    image_url: ImageURL | str


Part = TextPart | InputTextPart | ImagePart
Content = str | list[Part]


class FunctionCall(Struct):
    name: str
    arguments: str = ""


class ToolCall(Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class SystemMessage(Struct, tag_field="role", tag="system"):
    content: Content


class DeveloperMessage(Struct, tag_field="role", tag="developer"):
    content: Content


class UserMessage(Struct, tag_field="role", tag="user"):
    content: Content


class AssistantMessage(Struct, tag_field="role", tag="assistant"):
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class ToolMessage(Struct, tag_field="role", tag="tool"):
    content: Content
    tool_call_id: str = ""


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


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
    response_format: dict[str, Any] | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET
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
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None

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
                raw = call.function.arguments
                if raw.count("[") + raw.count("{") <= MAX_DEPTH:  # cannot nest deeper: no need to decode it
                    continue
                try:
                    deep = too_deep(msgspec.json.decode(raw))
                except msgspec.DecodeError:
                    deep = False  # not JSON: the prompt passes it on as text
                except RecursionError:
                    deep = True
                if deep:
                    return f"messages[{i}].tool_calls[{j}].function.arguments"
        return None


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests objects or arrays more than `limit` levels (walked level by level, without recursion)."""
    level: list[Any] = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        below: list[Any] = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, dict | list):
                    below.append(child)
        if not below:
            return False
        level = below
    return True


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
    "response_format",
    "service_tier",
)


def ignored_fields(request: ChatRequest) -> list[str]:
    return [name for name in IGNORED_FIELDS if getattr(request, name) not in (UNSET, None)]


request_decoder = msgspec.json.Decoder(ChatRequest)


# --- response ----------------------------------------------------------------------------------------------------


class PromptTokensDetails(Struct):
    cached_tokens: int = 0


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)


class ResponseMessage(Struct):
    content: str | None
    role: str = "assistant"
    tool_calls: list[ToolCall] | UnsetType = UNSET  # UNSET is left out of the JSON
    refusal: None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Choice(Struct):
    message: ResponseMessage
    finish_reason: FinishReason
    index: int = 0
    logprobs: None = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    object: str = "chat.completion"
    system_fingerprint: None = None


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str = "anthropic"
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


encoder = msgspec.json.Encoder()
