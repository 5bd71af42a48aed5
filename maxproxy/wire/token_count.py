"""`POST /v1/messages/count_tokens` (Anthropic's shape: `model`, `system`, `messages`, `tools`, `thinking`, ...): an
estimate, never a model call. The CLI has no way to count a client's messages without a turn — its
`get_context_usage` control request counts only its own context, with 10 upstream `count_tokens` calls (measured) —
and maxproxy never calls the upstream itself. So: a quarter of the characters of every text, tool input, tool
definition and system block, a flat price for each image (what Anthropic charges for the largest one it keeps, about
1.15 megapixels) and for each page of a PDF, plus a little per message; the answer says in a header that it is an
estimate. The request's blocks decode as `POST /v1/messages` decodes them (`wire.messages.request`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from maxproxy.wire.decoding import decode, too_deep, too_deep_field
from maxproxy.wire.messages.request import (
    Base64Source,
    Block,
    DocumentBlock,
    ImageBlock,
    MessageParam,
    TextBlock,
    TextSource,
    Thinking,
    ThinkingBlock,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
)

HEADER = "x-maxproxy-token-count"
IMAGE_TOKENS = 1_600  # Anthropic: (width x height) / 750, images resized to about 1.15 megapixels at most
PDF_PAGE_TOKENS = 2_000  # a page's text and its image, from Anthropic's "1,500-3,000 tokens per page"
MESSAGE_TOKENS = 4  # each message's role and separators
_CHARS_PER_TOKEN = 4
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


class CountRequest(msgspec.Struct, kw_only=True):
    """A Messages request without `max_tokens`: its blocks decode as `POST /v1/messages` decodes them."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


_decoder = msgspec.json.Decoder(CountRequest)


def decode_request(body: bytes) -> CountRequest:
    request = decode(_decoder, body)
    too_deep_field(next((f"tools[{i}]" for i, t in enumerate(request.tools or []) if too_deep(t)), None))
    return request


def estimate(request: CountRequest) -> int:
    chars, fixed = 0, 0  # fixed: tokens counted whole (images, PDF pages, message overhead)
    system = request.system
    chars += len(system) if isinstance(system, str) else sum(len(block.text) for block in system or [])
    chars += sum(len(msgspec.json.encode(tool)) for tool in request.tools or [])
    for message in request.messages:
        fixed += MESSAGE_TOKENS
        blocks: list[Any] = [TextBlock(message.content)] if isinstance(message.content, str) else message.content
        for block in blocks:
            more_chars, more_fixed = _block(block)
            chars, fixed = chars + more_chars, fixed + more_fixed
    return fixed + math.ceil(chars / _CHARS_PER_TOKEN)


def _block(block: Block) -> tuple[int, int]:
    """(characters, whole tokens) of one content block."""
    if isinstance(block, TextBlock):
        return len(block.text), 0
    if isinstance(block, ThinkingBlock):
        return len(block.thinking), 0
    if isinstance(block, ToolUseBlock):
        return len(block.name) + len(msgspec.json.encode(block.input)), 0
    if isinstance(block, ImageBlock):
        return 0, IMAGE_TOKENS
    if isinstance(block, DocumentBlock):
        return _document(block)
    if isinstance(block, ToolResultBlock):
        inner = [TextBlock(block.content)] if isinstance(block.content, str) else block.content
        parts = [_block(b) for b in inner]
        return sum(c for c, _ in parts), sum(f for _, f in parts)
    return 0, 0  # redacted thinking: what it costs is not known here


def _document(block: DocumentBlock) -> tuple[int, int]:
    source = block.source
    if isinstance(source, TextSource):
        return len(source.data), 0
    pages = 1
    if isinstance(source, Base64Source):
        try:
            pages = max(1, len(_PDF_PAGE.findall(base64.b64decode(source.data))))
        except (binascii.Error, ValueError):
            pass
    return 0, PDF_PAGE_TOKENS * pages
