"""The Messages request in neutral terms (`translate`): `system` and the messages become the neutral message Structs
(a user message's `tool_result` blocks are tool messages answering the assistant's `tool_use` blocks, so they pair
with the client-tool machinery as chat's tool messages do; earlier thinking is dropped, the CLI holds its own), custom
tools become chat-shaped function tools (server tools are a 400 naming their type), `tool_choice`, `thinking` and
`output_config` the neutral choice, effort and structured output; plus what the answer needs (thinking shown or not,
the fields and betas not applied) and where each neutral message came from, so a 400 raised on the neutral turn
names the Messages field.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import Struct

from maxproxy import errors
from maxproxy.turns import structured
from maxproxy.turns.messages import (
    AssistantMessage,
    DocumentPart,
    Effort,
    FunctionCall,
    ImagePart,
    ImageURL,
    Message,
    OutputSchema,
    Part,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    TurnRequest,
    UserMessage,
)
from maxproxy.wire.messages.request import (
    Base64Source,
    Block,
    DocumentBlock,
    FileSource,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    TextBlock,
    TextSource,
    ThinkingAdaptive,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolResultBlock,
    ToolUseBlock,
    URLSource,
    ignored_fields,
)

# Claude Code's first system block describes the client, not the prompt (`x-anthropic-billing-header: cc_version=…`).
BILLING_HEADER = "x-anthropic-billing-header:"
# Betas whose behaviour maxproxy gives: the CLI thinks between tool calls on its own; `output_config.effort` is
# honoured. Every other beta is accepted and named in `x-maxproxy-ignored-betas`.
APPLIED_BETAS = frozenset({"interleaved-thinking-2025-05-14", "effort-2025-11-24"})
DOCUMENT_TYPES = frozenset({"application/pdf", "text/plain"})
# An enabled thinking budget → the CLI's effort (its thinking is set by effort, not by a token budget).
_BUDGETS: tuple[tuple[int, Effort], ...] = ((4_096, "low"), (16_384, "medium"), (32_768, "high"))
_encoder = msgspec.json.Encoder()


class Translated(Struct, kw_only=True):
    """A Messages request as the core runs it, plus what the answer needs."""

    turn: TurnRequest
    thinking: bool  # the client asked for thinking: the answer carries thinking blocks
    omit_thinking: bool  # `display: "omitted"`: the blocks carry their signatures, not the thinking
    ignored: list[str]  # for `x-maxproxy-ignored-params`
    sources: list[str]  # the Messages field each neutral message came from
    tool_sources: list[str]

    def remap(self, exc: errors.ProxyError) -> errors.ProxyError:
        """`exc` with the neutral params it names (`messages[3].tool_calls`, `tools[1].function.parameters`, as
        `prompt.build` names them) rewritten to the Messages fields they came from."""

        def field(match: re.Match[str]) -> str:
            kind, k, rest = match[1], int(match[2]), match[3] or ""
            sources = self.sources if kind == "messages" else self.tool_sources
            if k >= len(sources):
                return match[0]
            if kind == "tools":
                return sources[k] + {".function.parameters": ".input_schema", ".function.name": ".name"}.get(rest, "")
            return sources[k] + (rest if rest.startswith(".content") and "content[" not in sources[k] else "")

        pattern = r"(messages|tools)\[(\d+)\]((?:\.function)?\.\w+(?:\[\d+\])?)?"
        exc.message = re.sub(pattern, field, exc.message)
        if exc.param is not None:
            exc.param = re.sub(pattern, field, exc.param)
        exc.args = (exc.message,)
        return exc


def translate(request: MessagesRequest, headers: dict[str, str] | Any) -> Translated:
    """The neutral turn for `request` (`headers`: the conversation hint `X-Claude-Code-Session-Id`), every check
    that needs no model or settings done (400s name Messages fields)."""
    messages: list[Message] = []
    sources: list[str] = []
    if (system := _system(request.system)) is not None:
        messages.append(system)
        sources.append("system")
    for i, param in enumerate(request.messages):
        for message, where in _messages(param, f"messages[{i}]"):
            messages.append(message)
            sources.append(where)
    if request.messages[-1].role == "assistant":
        raise errors.InvalidRequest(
            "A last message with role assistant (prefilling the answer) is not supported: the CLI starts the "
            "assistant's answer itself",
            param=f"messages[{len(request.messages) - 1}].role",
        )
    ignored = ignored_fields(request)
    tools, tool_sources = _tools(request.tools, ignored)
    choice = request.tool_choice
    tool_choice: str | dict[str, Any] | None = None
    parallel: bool | None = None
    if choice is not None:
        tool_choice = _tool_choice(choice.type, choice.name)
        if choice.disable_parallel_tool_use is not None:
            parallel = not choice.disable_parallel_tool_use
    thinking = request.thinking
    metadata = request.metadata or {}
    user = metadata.get("user_id")
    session = headers.get("X-Claude-Code-Session-Id")
    turn = TurnRequest(
        model=request.model,
        messages=messages,
        stream=request.stream,
        tools=tools or None,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        max_output_tokens=request.max_tokens,
        limit_params=(("max_tokens", request.max_tokens),),
        effort=_effort(request),
        output_schema=_output_schema(request),
        conversation_id=session.strip() if isinstance(session, str) and session.strip() else None,
        user=user if isinstance(user, str) else None,
    )
    return Translated(
        turn=turn,
        thinking=isinstance(thinking, ThinkingEnabled | ThinkingAdaptive),
        omit_thinking=isinstance(thinking, ThinkingEnabled | ThinkingAdaptive) and thinking.display == "omitted",
        ignored=ignored,
        sources=sources,
        tool_sources=tool_sources,
    )


def ignored_betas(header: str | None) -> list[str]:
    """The `anthropic-beta` names (comma-separated, as the SDKs join them) maxproxy does not apply."""
    names = (name.strip() for name in (header or "").split(","))
    return [name for name in names if name and name not in APPLIED_BETAS]


def _system(system: str | list[TextBlock] | None) -> SystemMessage | None:
    if isinstance(system, str):
        return SystemMessage(content=system) if system else None
    blocks = list(system or [])
    if blocks and blocks[0].text.startswith(BILLING_HEADER):
        blocks = blocks[1:]
    parts: list[Part] = [TextPart(text=block.text) for block in blocks if block.text]
    return SystemMessage(content=parts) if parts else None


def _messages(param: MessageParam, where: str) -> list[tuple[Message, str]]:
    """One Messages message as neutral ones: a user message's tool results first (each a tool message), then the
    rest of it; an assistant message's text and tool calls as one assistant message."""
    content = param.content
    if param.role == "system":
        return [(SystemMessage(content=_system_text(content, where)), where)]
    if isinstance(content, str):
        message: Message = AssistantMessage(content=content) if param.role == "assistant" else UserMessage(content)
        return [(message, where)]
    if param.role == "assistant":
        texts: list[str] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(content):
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                arguments = _encoder.encode(block.input).decode()
                calls.append(ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=arguments)))
            elif isinstance(block, ToolResultBlock | ImageBlock | DocumentBlock):
                kind = "tool_result" if isinstance(block, ToolResultBlock) else type(block).__name__[:-5].lower()
                raise errors.InvalidRequest(
                    f"{where}.content[{j}]: {kind} blocks belong in user messages", param=f"{where}.content[{j}].type"
                )
            # thinking and redacted_thinking: an earlier answer's, which the CLI keeps itself
        # The texts as one: what maxproxy streamed as several blocks (split by thinking or a call) joins back into
        # the answer the conversation recorded, so the next turn continues it.
        text = "".join(texts)
        return [(AssistantMessage(content=text or None, tool_calls=calls or None), where)]
    results: list[tuple[Message, str]] = []
    parts: list[Part] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(block, ToolResultBlock):
            results.append((_tool_result(block, at), at))
        elif isinstance(block, TextBlock):
            if block.text:
                parts.append(TextPart(text=block.text))
        elif isinstance(block, ImageBlock | DocumentBlock):
            parts.append(_media(block, at))
        elif isinstance(block, ToolUseBlock):
            raise errors.InvalidRequest(f"{at}: tool_use blocks belong in assistant messages", param=f"{at}.type")
    if parts or not results:
        results.append((UserMessage(content=parts), where))
    return results


def _system_text(content: str | list[Block], where: str) -> str:
    """A `system` message's text as one string: Claude Code sends it as blocks (with `cache_control`) on a first
    request and as a string on the next, and both must hash alike for the conversation to continue."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, block in enumerate(content):
        if not isinstance(block, TextBlock):
            raise errors.InvalidRequest(
                f"{where}.content[{j}]: a system message takes text blocks only", param=f"{where}.content[{j}].type"
            )
        texts.append(block.text)
    return "".join(texts)


def _tool_result(block: ToolResultBlock, where: str) -> ToolMessage:
    if isinstance(block.content, str):
        text = block.content
    else:
        texts: list[str] = []
        for k, part in enumerate(block.content):
            if not isinstance(part, TextBlock):
                raise errors.InvalidRequest(
                    f"{where}.content[{k}]: tool results may contain text only (the CLI passes a client tool's "
                    "result to the model as text)",
                    param=f"{where}.content[{k}].type",
                )
            texts.append(part.text)
        text = "\n".join(texts)
    if block.is_error:
        text = f"[The tool reported an error]\n{text}"
    return ToolMessage(content=text, tool_call_id=block.tool_use_id)


def _media(block: ImageBlock | DocumentBlock, where: str) -> Part:
    source = block.source
    if isinstance(source, Base64Source | TextSource) and isinstance(block, DocumentBlock):
        if source.media_type not in DOCUMENT_TYPES or isinstance(source, TextSource) != (
            source.media_type == "text/plain"
        ):
            raise errors.InvalidRequest(
                f"{where}: documents must be base64 application/pdf or text/plain text, not {source.media_type!r}",
                param=f"{where}.source.media_type",
            )
        return DocumentPart(media_type=source.media_type, data=source.data, title=block.title)
    if isinstance(source, Base64Source):
        return ImagePart(image_url=ImageURL(url=f"data:{source.media_type};base64,{source.data}"))
    kind = "image" if isinstance(block, ImageBlock) else "document"
    how = "url" if isinstance(source, URLSource) else "file" if isinstance(source, FileSource) else "text"
    raise errors.InvalidRequest(
        f"{where}: {kind} sources of type {how} are not supported; send the {kind} as base64 (maxproxy fetches "
        "nothing and has no file store)",
        param=f"{where}.source.type",
    )


def _tools(entries: list[dict[str, Any]] | None, ignored: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Custom tools as chat-shaped function tools (checked further in `tools.toolset`), and where each came from."""
    chat: list[dict[str, Any]] = []
    sources: list[str] = []
    for i, entry in enumerate(entries or []):
        where = f"tools[{i}]"
        kind = entry.get("type")
        if kind not in (None, "custom"):
            raise errors.InvalidRequest(
                f"The server tool type {kind!r} is not supported: maxproxy serves client tools only (tools with a "
                "name, description and input_schema)",
                param=f"{where}.type",
            )
        if entry.get("defer_loading") and "tools.defer_loading" not in ignored:
            ignored.append("tools.defer_loading")  # Claude Code's; every tool is listed to the model
        function = {"name": entry.get("name"), "parameters": entry.get("input_schema")}
        if entry.get("description") is not None:
            function["description"] = entry["description"]
        chat.append({"type": "function", "function": function})
        sources.append(where)
    return chat, sources


def _tool_choice(kind: str, name: str | None) -> str | dict[str, Any]:
    if kind == "any":
        return "required"
    if kind == "tool":
        if not name:
            raise errors.InvalidRequest('tool_choice of type "tool" needs the tool\'s name', param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    return kind  # auto, none


def _effort(request: MessagesRequest) -> Effort | None:
    if request.output_config is not None and request.output_config.effort is not None:
        return request.output_config.effort
    thinking = request.thinking
    if isinstance(thinking, ThinkingDisabled):
        return "none"  # the CLI's lowest effort: it cannot turn thinking off on every model
    if isinstance(thinking, ThinkingEnabled):
        return next((effort for limit, effort in _BUDGETS if thinking.budget_tokens < limit), "max")
    return None  # adaptive, or not asked: the CLI's default


def _output_schema(request: MessagesRequest) -> OutputSchema | None:
    param = "output_config.format" if request.output_config and request.output_config.format else "output_format"
    fmt = request.output_config.format if request.output_config and request.output_config.format else None
    fmt = fmt or request.output_format
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema":
        raise errors.InvalidRequest(f"{param}.type must be json_schema, not {fmt.get('type')!r}", param=f"{param}.type")
    return structured.json_schema({"name": "output", **fmt}, param)
