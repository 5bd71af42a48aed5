"""The Messages API request (`POST /v1/messages`): its Structs, decoded and type-checked in one pass (unknown keys
ignored, as Claude Code and the SDKs send many; content blocks a tagged union, so a block of an unknown type is a 400
naming where it is), and the checks that need no model: refused fields and server tools.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from maxproxy import errors
from maxproxy.wire.decoding import TokenLimit, decode, too_deep, too_deep_field

# --- content blocks ----------------------------------------------------------------------------------------------


class TextBlock(Struct, tag="text"):
    text: str


class Base64Source(Struct, tag="base64"):
    media_type: str
    data: str


class TextSource(Struct, tag="text"):
    data: str
    media_type: str = "text/plain"


class URLSource(Struct, tag="url"):
    url: str


class FileSource(Struct, tag="file"):
    file_id: str


class ImageBlock(Struct, tag="image"):
    source: Base64Source | URLSource | FileSource


class DocumentBlock(Struct, tag="document"):
    source: Base64Source | TextSource | URLSource | FileSource
    title: str | None = None


class ToolUseBlock(Struct, tag="tool_use"):
    id: Annotated[str, Meta(min_length=1)]
    name: str
    input: dict[str, Any]


class ToolResultBlock(Struct, tag="tool_result"):
    tool_use_id: Annotated[str, Meta(min_length=1)]
    content: str | list[TextBlock | ImageBlock | DocumentBlock] = ""
    is_error: bool = False


class ThinkingBlock(Struct, tag="thinking"):
    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlock(Struct, tag="redacted_thinking"):
    data: str = ""


Block = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock


class MessageParam(Struct):
    # `system` is not in Anthropic's documented roles, but Claude Code (2.1.328, for the 5.x models) sends its
    # environment text as a `system` message between the others.
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


# --- settings ----------------------------------------------------------------------------------------------------


class ThinkingEnabled(Struct, tag="enabled"):
    budget_tokens: Annotated[int, Meta(ge=1024)]
    display: str | None = None  # "omitted": thinking blocks carry their signature, not their text


class ThinkingAdaptive(Struct, tag="adaptive"):
    display: str | None = None


class ThinkingDisabled(Struct, tag="disabled"):
    pass


Thinking = ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled


class ToolChoice(Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class OutputConfig(Struct, kw_only=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: dict[str, Any] | None = None


class MessagesRequest(Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    max_tokens: TokenLimit
    system: str | list[TextBlock] | None = None
    stream: bool = False
    # Tools stay free-form: a custom tool has no `type`, server tools are told apart by theirs (`translation`).
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    output_format: dict[str, Any] | None = None  # the structured-outputs beta's spelling of `output_config.format`
    metadata: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    # Accepted, checked for type and range, and not applied (the CLI has no way to pass them); named in a header.
    temperature: Annotated[float, Meta(ge=0, le=1)] | UnsetType | None = UNSET
    top_p: Annotated[float, Meta(ge=0, le=1)] | UnsetType | None = UNSET
    top_k: Annotated[int, Meta(ge=0)] | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET
    context_management: dict[str, Any] | UnsetType | None = UNSET  # Claude Code's; the CLI manages its own context
    # Refused when set: maxproxy runs no remote MCP servers and no code-execution containers.
    mcp_servers: list[Any] | None = None
    container: str | dict[str, Any] | None = None

    def deep_field(self) -> str | None:
        """The first free-form field nesting deeper than `MAX_DEPTH`, as a param."""
        fields: list[tuple[str, Any]] = [
            ("metadata", self.metadata),
            ("output_format", self.output_format),
            ("output_config.format", self.output_config.format if self.output_config else None),
            *((f"tools[{i}]", tool) for i, tool in enumerate(self.tools or [])),
        ]
        for i, message in enumerate(self.messages):
            for j, block in enumerate(message.content if isinstance(message.content, list) else []):
                if isinstance(block, ToolUseBlock):
                    fields.append((f"messages[{i}].content[{j}].input", block.input))
        for where, value in fields:
            if too_deep(value):
                return where
        return None


IGNORED_FIELDS = ("temperature", "top_p", "top_k", "service_tier", "context_management")

_decoder = msgspec.json.Decoder(MessagesRequest)


def decode_request(body: bytes) -> MessagesRequest:
    """The request, or a 400 naming the field (bad JSON, types, ranges, nesting, and the refused fields)."""
    request = decode(_decoder, body)
    too_deep_field(request.deep_field())
    if request.stop_sequences:
        # The CLI cannot send stop sequences upstream, and cutting the answer here would leave the CLI's
        # conversation holding text the client never saw: the next turn could not continue it.
        raise errors.InvalidRequest(
            "stop_sequences are not supported: the Claude Code CLI cannot pass them to the model",
            param="stop_sequences",
        )
    if request.mcp_servers:
        raise errors.InvalidRequest("mcp_servers are not supported: maxproxy serves client tools", param="mcp_servers")
    if request.container is not None:
        raise errors.InvalidRequest("containers are not supported (no code execution)", param="container")
    return request


def ignored_fields(request: MessagesRequest) -> list[str]:
    return [name for name in IGNORED_FIELDS if getattr(request, name) not in (UNSET, None)]
