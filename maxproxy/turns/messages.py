"""The neutral turn: the messages of a conversation (system, developer, user, assistant with its tool calls, tool
results; text and image parts), the token `Usage` of an answer, and `TurnRequest`, what a wire protocol hands the turn
core. The message Structs carry the msgspec tags of the OpenAI chat wire, so that wire decodes straight into them; the
modules below the wire layer (prompt, conversation, sessions, reply, usage, metrics) know only these types.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

# --- messages ----------------------------------------------------------------------------------------------------


class TextPart(Struct, tag="text"):
    text: str


class InputTextPart(Struct, tag="input_text"):
    text: str


class ImageURL(Struct):
    url: str
    detail: str | None = None


class ImagePart(Struct, tag="image_url"):
    image_url: ImageURL | str


class DocumentPart(Struct, tag="document"):
    """A document the model reads as it is: a base64 PDF (`application/pdf`) or plain text (`text/plain`). The
    Messages wire makes these (the CLI passes a `document` block on to the model, measured)."""

    media_type: str
    data: str
    title: str | None = None


Part = TextPart | InputTextPart | ImagePart | DocumentPart
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


FinishReason = Literal["stop", "length", "tool_calls"]  # why an answer ended


# --- usage -------------------------------------------------------------------------------------------------------


class PromptTokensDetails(Struct):
    cached_tokens: int = 0  # read from the upstream's prompt cache
    cache_creation_tokens: int = 0  # written to it (Anthropic's `cache_creation_input_tokens`)


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)


# --- the request -------------------------------------------------------------------------------------------------

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class OutputSchema(Struct, frozen=True, kw_only=True):
    """Structured output, whatever protocol asked for it: the answer's text must be JSON that validates against
    `schema` (a checked JSON Schema; `{"type": "object"}` for `json_object`, any JSON object)."""

    kind: Literal["json_schema", "json_object"]
    schema: dict[str, Any]
    name: str | None = None  # the schema's name, as the client gave it (shown to the model)
    description: str | None = None


class TurnRequest(Struct, kw_only=True):
    """One turn as the core runs it, whatever protocol asked for it. Error `param`s name the client's fields: the
    wire says how its output limit was spelled (`limit_params`)."""

    model: str
    messages: list[Message]
    stream: bool = False
    tools: list[dict[str, Any]] | None = None  # function tools in the chat shape ({type, function: {name, ...}})
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None  # the limit the turn is stopped at
    # Each output limit the client sent, under its own name: each is checked against the model's maximum.
    limit_params: tuple[tuple[str, int], ...] = ()
    choices: int | None = None  # how many answers were asked for (chat's `n`); only one can be given
    effort: Effort | None = None
    output_schema: OutputSchema | None = None  # structured outputs: the answer is checked JSON (`turns.structured`)
    # Conversation hints, strongest first after the X-Session-Id header.
    conversation_id: str | None = None
    prompt_cache_key: str | None = None
    user: str | None = None
