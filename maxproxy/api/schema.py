"""The OpenAI chat wire format as msgspec Structs: the request (decoded and type-checked in one pass; unknown keys
are ignored, as real clients send many) and the response shapes maxproxy writes (completion, chunk, model list).
Fields maxproxy accepts but cannot honour default to UNSET, so the handler can name the ones a client actually sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# --- request -----------------------------------------------------------------------------------------------------


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
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    # Accepted, checked for type, and ignored (the CLI has no way to pass them); named in a response header.
    temperature: float | UnsetType | None = UNSET
    top_p: float | UnsetType | None = UNSET
    stop: str | list[str] | UnsetType | None = UNSET
    presence_penalty: float | UnsetType | None = UNSET
    frequency_penalty: float | UnsetType | None = UNSET
    logit_bias: dict[str, float] | UnsetType | None = UNSET
    logprobs: bool | UnsetType | None = UNSET
    top_logprobs: int | UnsetType | None = UNSET
    seed: int | UnsetType | None = UNSET
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
