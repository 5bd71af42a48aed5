"""The prompt: an OpenAI chat request turned into what one CLI turn needs (pure functions, no I/O).

The result is a `Turn`: the `Launch` (model, and the system prompt when it is a spawn-time setting), the per-turn
`Options` (output limit, effort), and the stdin lines that replay the earlier history (`shouldQuery: false` user
lines and assistant lines) and end with the querying user line. Every user line is `client_composed`, so the CLI
delivers it verbatim: no slash commands (`/clear`, `/model`) and no `@file` expansion from a client's text.

The client's system prompt is, by default, embedded as a delimited block at the head of the first user message
rather than replacing the CLI's own system prompt (settings `system_prompt_mode`; README: "System prompts").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from maxproxy import errors
from maxproxy.api.schema import (
    AssistantMessage,
    ChatRequest,
    Content,
    DeveloperMessage,
    ImagePart,
    InputTextPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from maxproxy.claude.command import Launch, Options
from maxproxy.settings import Settings

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


def build(request: ChatRequest, settings: Settings, *, start: int = 0) -> Turn:
    """The turn for `request`; with `start`, only messages[start:] (a continuation: the CLI holds the rest)."""
    model = settings.model_table.get(request.model)
    if model is None:
        raise errors.ModelNotFound(
            f"The model {request.model!r} does not exist; GET /v1/models lists the models maxproxy serves",
            param="model",
        )
    if request.n is not None and request.n > 1:
        raise errors.InvalidRequest("n > 1 is not supported: the CLI returns one answer per turn", param="n")

    system: list[str] = []
    steps: list[tuple[str, list[Block]]] = []  # ("user" | "assistant", blocks), merged by side
    for i, message in enumerate(request.messages):
        if i < start:
            continue
        where = f"messages[{i}]"
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
            side, blocks = "user", _tool_result(message, where)
        else:
            side, blocks = "assistant", _assistant_blocks(message, where)
            if not blocks:
                continue  # an empty assistant turn adds nothing to the history
        if steps and steps[-1][0] == side:
            steps[-1][1].extend(blocks)
        else:
            steps.append((side, blocks))

    if not steps or steps[-1][0] != "user":
        raise errors.InvalidRequest("The last message must be a user or tool message", param="messages")
    if steps[0][0] == "assistant":
        # The model's input must open with a user turn; a bot whose history starts with its own greeting gets a
        # neutral marker in front of it.
        steps.insert(0, ("user", [{"type": "text", "text": "[The conversation starts with the assistant.]"}]))

    system_text = "\n\n".join(system)
    launch_system: str | None = None
    if system_text and settings.system_prompt_mode == "embed":
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
            line: Line = {
                "type": "user",
                "message": {"role": "user", "content": blocks},
                "parent_tool_use_id": None,
                "session_id": "",
                "client_composed": True,
            }
            if n != last:
                line["shouldQuery"] = False
            lines.append(line)
    return Turn(
        launch=Launch(model=model.cli, system_prompt=launch_system),
        options=Options(max_output_tokens=request.token_limit, effort=_EFFORT.get(request.reasoning_effort or "")),
        lines=lines,
        family=model.family,
    )


def _plain_text(content: Content, where: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        if isinstance(part, ImagePart):
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


def _assistant_blocks(message: AssistantMessage, where: str) -> list[Block]:
    blocks: list[Block] = []
    if message.content is not None:
        text = _plain_text(message.content, where)
        if text:
            blocks.append({"type": "text", "text": text})
    if message.refusal:
        blocks.append({"type": "text", "text": message.refusal})
    for call in message.tool_calls or []:
        # Until tools are passed through to the CLI, earlier calls stay in the history as text the model can read.
        blocks.append(
            {
                "type": "text",
                "text": f"[Called tool {call.function.name} (id {call.id}) with arguments: {call.function.arguments}]",
            }
        )
    return blocks


def _tool_result(message: ToolMessage, where: str) -> list[Block]:
    text = _plain_text(message.content, where)
    return [{"type": "text", "text": f"[Result of tool call {message.tool_call_id}]\n{text}"}]
