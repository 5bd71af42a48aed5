"""The Responses API request: its Structs (decoded in one checked pass; unknown keys ignored, numbers bounded as
chat's are; input items stay free-form and are converted one at a time, so a 400 names the failing item), the fields
refused outright, and the input item and hosted tool types the translation knows.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from maxproxy import errors
from maxproxy.turns.messages import (
    Effort,
)
from maxproxy.wire.decoding import TokenLimit, decode, too_deep, too_deep_arguments, too_deep_field


class Reasoning(Struct):
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class TextConfig(Struct):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    # Items stay free-form here and are converted one by one in `to_chat`: the short message form has no `type`, so
    # no tagged union can hold them, and one item at a time names the failing item in `param`.
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: TokenLimit | None = None
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    stream: bool = False
    # State and hints for the conversation store and the session picker.
    store: bool | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, Any] | None = None
    client_metadata: dict[str, Any] | None = None
    # Accepted, checked for type and range, and ignored (named in `Translated.ignored`).
    include: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1, le=1_000)] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    # Refused when set: there is no background queue, no conversation object and no stored prompt template.
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    def deep_field(self) -> str | None:
        """The first free-form field (or function call's `arguments`) nesting deeper than `MAX_DEPTH`, as a param."""
        fields: list[tuple[str, Any]] = [
            ("metadata", self.metadata),
            ("client_metadata", self.client_metadata),
            ("tool_choice", self.tool_choice),
            ("text.format", self.text.format if self.text else None),
            *((f"tools[{i}]", tool) for i, tool in enumerate(self.tools or [])),
        ]
        if isinstance(self.input, list):
            fields.extend((f"input[{i}]", item) for i, item in enumerate(self.input))
        for where, value in fields:
            if too_deep(value):
                return where
        for i, item in enumerate(self.input if isinstance(self.input, list) else []):
            raw = item.get("arguments")
            if item.get("type") == "function_call" and isinstance(raw, str) and too_deep_arguments(raw):
                return f"input[{i}].arguments"
        return None


_request_decoder = msgspec.json.Decoder(ResponsesRequest)


def decode_request(body: bytes) -> ResponsesRequest:
    """The request, or a 400 naming the field (bad JSON, types, ranges, nesting, and the refused fields)."""
    request = decode(_request_decoder, body)
    too_deep_field(request.deep_field())
    if request.background:
        raise errors.InvalidRequest("background responses are not supported: send background false", param="background")
    if request.conversation is not None:
        raise errors.InvalidRequest(
            "conversation objects are not supported; use previous_response_id or send the whole input",
            param="conversation",
        )
    if request.prompt is not None:
        raise errors.InvalidRequest("stored prompt templates are not supported; send input", param="prompt")
    if request.input is None and request.previous_response_id is None:
        raise errors.InvalidRequest("input is required", param="input")
    if isinstance(request.input, list) and not request.input and request.previous_response_id is None:
        raise errors.InvalidRequest("input must not be empty", param="input")
    return request


# Input items, converted one at a time (`msgspec.convert`).


class InputText(Struct, tag="input_text"):
    text: str


class OutputText(Struct, tag="output_text"):
    text: str


class InputImage(Struct, tag="input_image"):
    image_url: str | None = None
    detail: Literal["low", "high", "auto", "original"] | None = None
    file_id: str | None = None


class Refusal(Struct, tag="refusal"):
    refusal: str


MessagePart = InputText | OutputText | InputImage | Refusal
OutputPart = InputText | InputImage


class MessageItem(Struct):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[MessagePart]
    id: str | None = None


class FunctionCallItem(Struct):
    call_id: Annotated[str, Meta(min_length=1)]
    name: str
    arguments: str
    id: str | None = None
    namespace: str | None = None


class FunctionCallOutputItem(Struct):
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[OutputPart]
    id: str | None = None


class ItemReference(Struct):
    id: str


UNSUPPORTED_PARTS = {"input_file": "files", "input_audio": "audio"}
HOSTED_TOOLS = frozenset(
    {
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "mcp",
        "image_generation",
        "local_shell",
        "shell",
        "apply_patch",
        "custom",
        "tool_search",
    }
)
WEB_SEARCH = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"})


def convert_item(value: Any, kind: type[Any], where: str) -> Any:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        param = where + at.rstrip("`").replace("[...]", "")
        if missing := re.search(r"missing required field `(\w+)`", message):
            param += f".{missing[1]}"  # msgspec names the object, the client needs the field
        raise errors.InvalidRequest(f"Invalid request: {message} (at {param})", param=param) from None
