"""The prompt: a neutral turn request turned into what one CLI turn needs (pure functions, no I/O).

The result is a `Turn`: the `Launch` (model, and the system prompt when it is a spawn-time setting), the per-turn
`Options` (output limit, effort), and the stdin lines that replay the earlier history (`shouldQuery: false` user
lines and assistant lines) and end with the querying user line. Every user line is `client_composed`, so the CLI
delivers it verbatim: no slash commands (`/clear`, `/model`) and no `@file` expansion from a client's text.

The client's system prompt is, by default, embedded as a delimited block at the head of the first user message
rather than replacing the CLI's own system prompt (settings `system_prompt_mode`; README: "System prompts").

A structured turn (`output_schema`) carries a note saying what JSON to answer with, as the last block of its final
user message (`turns.structured`).

With `tools`, earlier tool calls and their results are replayed as real `tool_use`/`tool_result` blocks, and the
tool messages that answer the calls a waiting turn stopped at become that turn's `results` (the CLI gets them as the
calls' results, not as a new message). Every tool message must answer a call of the assistant message before it,
and every call must be answered, as OpenAI requires.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from maxproxy import errors, tools
from maxproxy.claude.command import Launch, Options
from maxproxy.settings import Model, Settings
from maxproxy.turns import structured
from maxproxy.turns.messages import (
    AssistantMessage,
    Content,
    DeveloperMessage,
    DocumentPart,
    ImagePart,
    InputTextPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    TurnRequest,
    UserMessage,
)

Block = dict[str, Any]
Line = dict[str, Any]

IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[\w.+-]+=[^;,]*)*);base64,", re.ASCII)
_BASE64_EDGE = re.compile(r"[A-Za-z0-9+/\s]*={0,2}\s*", re.ASCII)


# OpenAI's reasoning_effort → the CLI's --effort (which has no "none"/"minimal": its lowest is "low").
_EFFORT = {
    "none": "low",
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "max",
}


@dataclass(frozen=True)
class Turn:
    launch: Launch
    options: Options
    lines: list[Line]
    family: str  # the model family, for the pool's concurrency limits
    toolset: tools.Toolset = field(default_factory=tools.Toolset)  # the client's tools (none: empty)
    results: dict[str, str] | None = None  # tool results for the waiting turn this request goes on with, by call id


def build(request: TurnRequest, settings: Settings, models: Mapping[str, Model], *, start: int = 0) -> Turn:
    """The turn for `request`; with `start`, only messages[start:] (a continuation: the CLI holds the rest). `models`
    is the served model table (the app's `catalog.Catalog`)."""
    model = models.get(request.model)
    if model is None:
        raise errors.ModelNotFound(
            f"The model {request.model!r} does not exist; GET /v1/models lists the models maxproxy serves",
            param="model",
        )
    for name, limit in request.limit_params or (("max_output_tokens", request.max_output_tokens),):
        if limit is not None and limit > model.max_output_tokens:
            raise errors.InvalidRequest(
                f"{name} is {limit}, but {request.model!r} can write at most {model.max_output_tokens} output tokens",
                param=name,
            )
    if request.choices is not None and request.choices > 1:
        raise errors.InvalidRequest("n > 1 is not supported: the CLI returns one answer per turn", param="n")
    toolset = tools.toolset(request.tools, request.tool_choice, request.parallel_tool_calls)
    _check_tool_messages(request)
    as_blocks = toolset is not None  # without tools, earlier calls are replayed as text (the CLI lists none)

    system: list[str] = []
    steps: list[tuple[str, list[Block]]] = []  # ("user" | "assistant", blocks), merged by side
    results: dict[str, str] | None = None
    for i, message in enumerate(request.messages):
        if i < start:
            continue
        where = f"messages[{i}]"
        if start and isinstance(message, ToolMessage) and not steps:
            # Answers to the calls the conversation's waiting turn stopped at.
            results = results if results is not None else {}
            results[message.tool_call_id] = _plain_text(message.content, where)
            continue
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = _plain_text(message.content, where)
            if text:
                system.append(text)
            continue
        if isinstance(message, UserMessage):
            side, blocks = "user", _blocks(message.content, where)
            if not blocks:
                if i == len(request.messages) - 1:
                    raise errors.InvalidRequest(f"{where} has no content", param=f"{where}.content")
                continue  # an empty message earlier in the history adds nothing
        elif isinstance(message, ToolMessage):
            side, blocks = "user", _tool_result(message, where, as_blocks)
        else:
            side, blocks = "assistant", _assistant_blocks(message, where, as_blocks)
            if not blocks:
                continue  # an empty assistant turn adds nothing to the history
        if steps and steps[-1][0] == side:
            steps[-1][1].extend(blocks)
        else:
            steps.append((side, blocks))

    if results is None and (not steps or steps[-1][0] != "user"):
        raise errors.InvalidRequest("The last message must be a user or tool message", param="messages")
    for side, blocks in steps:
        if side == "user":  # the upstream wants a message's tool results before anything else in it
            blocks.sort(key=lambda b: b["type"] != "tool_result")
    if toolset is not None and steps and (note := toolset.instructions()):
        steps[-1][1].append({"type": "text", "text": note})
    if request.output_schema is not None and steps and steps[-1][0] == "user":
        steps[-1][1].append({"type": "text", "text": structured.instructions(request.output_schema)})
    if steps and steps[0][0] == "assistant":
        # The model's input must open with a user turn; a bot whose history starts with its own greeting gets a
        # neutral marker in front of it.
        steps.insert(0, ("user", [{"type": "text", "text": "[The conversation starts with the assistant.]"}]))

    system_text = "\n\n".join(system)
    launch_system: str | None = None
    if system_text and settings.system_prompt_mode == "embed" and steps:
        steps[0][1].insert(0, {"type": "text", "text": f"<system_prompt>\n{system_text}\n</system_prompt>"})
    elif system_text:
        launch_system = system_text

    lines: list[Line] = []
    last = len(steps) - 1
    for n, (side, blocks) in enumerate(steps):
        if side == "assistant":
            lines.append(
                {
                    "type": "assistant",
                    "message": {"role": "assistant", "content": blocks},
                    "parent_tool_use_id": None,
                    "session_id": "",
                }
            )
        else:
            lines.append(user_line(blocks, query=n == last))
    cli_tools = None
    if toolset is not None and settings.cli_tools and not settings.mix_cli_tools:
        cli_tools = ""  # the client's tools only: the CLI's own are off for this request
    return Turn(
        launch=Launch(model=model.cli, system_prompt=launch_system, cli_tools=cli_tools),
        options=Options(max_output_tokens=request.max_output_tokens, effort=_EFFORT.get(request.effort or "")),
        lines=lines,
        family=model.family,
        toolset=toolset or tools.Toolset(),
        results=results,
    )


def user_line(blocks: list[Block], *, query: bool = True) -> Line:
    """A user stdin line; without `query`, history the model does not answer yet."""
    line: Line = {
        "type": "user",
        "message": {"role": "user", "content": blocks},
        "parent_tool_use_id": None,
        "session_id": "",
        "client_composed": True,
    }
    if not query:
        line["shouldQuery"] = False
    return line


def _check_tool_messages(request: TurnRequest) -> None:
    """Tool messages answer the calls of the assistant message just before them, every call gets one (OpenAI's
    rule; the upstream has the same one for tool_use and tool_result blocks)."""
    open_calls: dict[str, int] = {}  # unanswered call id → index of its assistant message
    for i, message in enumerate(request.messages):
        if isinstance(message, ToolMessage):
            if message.tool_call_id not in open_calls:
                raise errors.InvalidRequest(
                    f"messages[{i}] is a tool message for tool_call_id {message.tool_call_id!r}, which no tool call "
                    "of the assistant message before it has (or which was answered already)",
                    param=f"messages[{i}].tool_call_id",
                )
            del open_calls[message.tool_call_id]
            continue
        if open_calls:
            first, at = next(iter(open_calls.items()))
            raise errors.InvalidRequest(
                f"The tool call {first!r} of messages[{at}] has no tool message answering it before messages[{i}]",
                param=f"messages[{at}].tool_calls",
            )
        if isinstance(message, AssistantMessage):
            open_calls = {call.id: i for call in message.tool_calls or []}
    if open_calls:
        first, at = next(iter(open_calls.items()))
        raise errors.InvalidRequest(
            f"The tool call {first!r} of messages[{at}] has no tool message answering it",
            param=f"messages[{at}].tool_calls",
        )


def _plain_text(content: Content, where: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        if isinstance(part, ImagePart | DocumentPart):
            raise errors.InvalidRequest(f"{where} may contain text only", param=f"{where}.content[{j}]")
        texts.append(part.text)
    return "\n".join(texts)


def _blocks(content: Content, where: str) -> list[Block]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[Block] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart | InputTextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, DocumentPart):
            blocks.append(_document(part))
        else:
            blocks.append(_image(part, f"{where}.content[{j}].image_url"))
    return blocks


def _image(part: ImagePart, where: str) -> Block:
    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
    match = _DATA_URL.match(url)
    if match is None:
        raise errors.InvalidRequest(
            "Images must be base64 data: URLs (data:image/png;base64,...); maxproxy does not fetch remote URLs",
            param=where,
        )
    media_type = match["type"].lower().replace("image/jpg", "image/jpeg")
    if media_type not in IMAGE_TYPES:
        raise errors.InvalidRequest(
            f"Unsupported image type {media_type!r}; use one of {', '.join(sorted(IMAGE_TYPES))}", param=where
        )
    data = url[match.end() :]
    # A cheap shape check (a full decode of a 20 MB image would stall the event loop); the upstream checks the rest.
    if not data or not _BASE64_EDGE.fullmatch(data[:256]) or not _BASE64_EDGE.fullmatch(data[-256:]):
        raise errors.InvalidRequest("The image data is not valid base64", param=where)
    if any(c.isspace() for c in data[:256]) or any(c.isspace() for c in data[-256:]):
        data = "".join(data.split())
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document(part: DocumentPart) -> Block:
    kind = "text" if part.media_type == "text/plain" else "base64"  # the wire admits only these two
    block: Block = {"type": "document", "source": {"type": kind, "media_type": part.media_type, "data": part.data}}
    if part.title:
        block["title"] = part.title
    return block


def _assistant_blocks(message: AssistantMessage, where: str, as_blocks: bool) -> list[Block]:
    blocks: list[Block] = []
    if message.content is not None:
        text = _plain_text(message.content, where)
        if text:
            blocks.append({"type": "text", "text": text})
    if message.refusal:
        blocks.append({"type": "text", "text": message.refusal})
    for j, call in enumerate(message.tool_calls or []):
        if as_blocks:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": tools.block_id(call.id),
                    "name": call.function.name,
                    "input": _arguments(call.function.arguments, f"{where}.tool_calls[{j}].function.arguments"),
                }
            )
            continue
        # Without tools in the request the CLI lists none: earlier calls stay in the history as text.
        blocks.append(
            {
                "type": "text",
                "text": f"[Called tool {call.function.name} (id {call.id}) with arguments: {call.function.arguments}]",
            }
        )
    return blocks


def _arguments(raw: str, where: str) -> Any:
    try:
        value = msgspec.json.decode(raw or "{}")
    except msgspec.DecodeError:
        return {"arguments": raw}
    except RecursionError:  # the wire refuses these first (`wire.chat.ChatRequest.deep_field`); a direct caller may not
        raise errors.InvalidRequest(f"{where} nests JSON too deep", param=where, code="too_deep") from None
    return value if isinstance(value, dict) else {"arguments": value}


def _tool_result(message: ToolMessage, where: str, as_blocks: bool) -> list[Block]:
    text = _plain_text(message.content, where)
    if as_blocks:
        content = tools.result_text(text) or "(no output)"
        return [{"type": "tool_result", "tool_use_id": tools.block_id(message.tool_call_id), "content": content}]
    return [{"type": "text", "text": f"[Result of tool call {message.tool_call_id}]\n{text}"}]
