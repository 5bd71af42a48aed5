"""The OpenAI Responses API (`POST /v1/responses`) as a wire protocol: its request Structs (decoded in one checked
pass; unknown keys ignored, numbers bounded as chat's are), the request translated into chat's message Structs and
chat-shaped tools, tool choice and output format (`to_chat`: what the turn core consumes), and the output side, a
`ResponseStream` fed neutral turn events (text, thinking, tool calls, usage, finish, error) that produces the SSE
events the SDKs' stream helpers and Codex need, in their order, and the final response object. Pure: no I/O.

Call ids: maxproxy issues `call` + letters and digits (`tools.call_id`). Outputs are paired with the calls *in the
input the client sent*, by the id as sent, so a client that rewrites ids (OpenClaw turns `call000007` into
`call_call000007_fc_call000007_028de33e26` in both the call and its output) still pairs. `issued_id` recovers the id
maxproxy issued from a rewritten one: the id itself when it is `call` + letters and digits, else the first run of
letters and digits (between other characters) that is `call` followed by at least one more letter or digit.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Collection
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from maxproxy import errors, tools
from maxproxy.turns.core import Event as TurnEvent
from maxproxy.turns.core import Keepalive, Outcome, ReasoningDelta, TextDelta, ToolCallEvent
from maxproxy.turns.messages import (
    AssistantMessage,
    DeveloperMessage,
    Effort,
    FunctionCall,
    ImagePart,
    ImageURL,
    Message,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    TurnRequest,
    UserMessage,
)
from maxproxy.wire.decoding import TokenLimit, decode, too_deep, too_deep_arguments, too_deep_field

# --- request -----------------------------------------------------------------------------------------------------


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


_UNSUPPORTED_PARTS = {"input_file": "files", "input_audio": "audio"}
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


def _convert(value: Any, kind: type[Any], where: str) -> Any:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        param = where + at.rstrip("`").replace("[...]", "")
        if missing := re.search(r"missing required field `(\w+)`", message):
            param += f".{missing[1]}"  # msgspec names the object, the client needs the field
        raise errors.InvalidRequest(f"Invalid request: {message} (at {param})", param=param) from None


# --- request → chat ----------------------------------------------------------------------------------------------


class Translated(Struct, kw_only=True):
    """A Responses request in chat's terms: what the turn core gets, plus what the response object echoes."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None  # chat's shape: {"type": "function", "function": {...}}
    tool_choice: str | dict[str, Any] | None  # chat's shape
    parallel_tool_calls: bool | None
    max_output_tokens: int | None
    effort: Effort | None  # as chat's `reasoning_effort`
    response_format: dict[str, Any] | None  # as chat's `response_format` (None for plain text)
    summary: bool  # whether the client asked for reasoning summaries
    ignored: list[str]  # for `x-maxproxy-ignored-params`
    # Conversation hints: the store and the session picker read these.
    store: bool  # default true, as OpenAI's
    previous_response_id: str | None
    prompt_cache_key: str | None
    user: str | None  # `user`, else `safety_identifier`
    metadata: dict[str, Any] | None
    # Flattened namespace functions: the function's name → its namespace (put back on output `function_call`s).
    namespaces: dict[str, str]
    # The client's call ids (as sent) → the id maxproxy issued (`issued_id`), for the ids where they differ.
    rewritten_ids: dict[str, str]
    # Where each chat message and each chat tool came from, as a Responses param (`remap` uses them).
    sources: list[str]
    call_sources: dict[tuple[int, int], str]
    tool_sources: list[str]
    # Echoed in the response object, in the Responses shape.
    echo: dict[str, Any]

    def remap(self, exc: errors.ProxyError) -> errors.ProxyError:
        """`exc` with a chat param (`messages[3].content`, `tools[2].function.name`, as `prompt.build` names them)
        rewritten to the Responses field it came from (`input[5].content`, `tools[7].tools[0].name`)."""
        if exc.param is None:
            return exc
        new = self.param(exc.param)
        if new != exc.param:
            exc.message = exc.message.replace(exc.param, new)
            exc.args = (exc.message,)
            exc.param = new
        return exc

    def param(self, chat_param: str) -> str:
        if m := re.match(r"messages\[(\d+)\]\.tool_calls\[(\d+)\](?:\.function)?(.*)", chat_param):
            source = self.call_sources.get((int(m[1]), int(m[2])))
            return source + m[3] if source is not None else chat_param
        if m := re.match(r"messages\[(\d+)\](.*)", chat_param):
            k, rest = int(m[1]), m[2]
            if k >= len(self.sources):
                return chat_param
            source = self.sources[k]
            if isinstance(self.messages[k], ToolMessage):
                rest = rest.replace(".tool_call_id", ".call_id", 1).replace(".content", ".output", 1)
            return source + rest if source.startswith("input[") else source
        if m := re.match(r"tools\[(\d+)\](?:\.function)?(.*)", chat_param):
            k = int(m[1])
            return self.tool_sources[k] + m[2] if k < len(self.tool_sources) else chat_param
        if chat_param == "messages":
            return "input"
        return chat_param


def to_turn(request: ResponsesRequest, translated: Translated) -> TurnRequest:
    """The neutral turn the core runs for this request."""
    limit = translated.max_output_tokens
    return TurnRequest(
        model=request.model,
        messages=translated.messages,
        stream=request.stream,
        tools=translated.tools,
        tool_choice=translated.tool_choice,
        parallel_tool_calls=translated.parallel_tool_calls,
        max_output_tokens=limit,
        limit_params=(("max_output_tokens", limit),) if limit is not None else (),
        effort=translated.effort,
        output_schema=translated.response_format,
        prompt_cache_key=translated.prompt_cache_key,
        user=translated.user,
    )


def issued_id(client_id: str, pending: Collection[str] | None = None) -> str | None:
    """The call id maxproxy issued that `client_id` carries (the rule is in the module docstring). With `pending`
    (the ids a waiting turn expects), only one of those counts."""
    candidates: list[str] = [client_id, *re.findall(r"[A-Za-z0-9]+", client_id)]
    for candidate in candidates:
        if _ISSUED.fullmatch(candidate) and (pending is None or candidate in pending):
            return candidate
    return None


_ISSUED = re.compile(r"call[A-Za-z0-9]+")


def to_chat(request: ResponsesRequest, *, restore_ids: bool = True) -> Translated:
    """The request in chat's terms, every check that needs no model or settings done (400s name Responses params).
    With `restore_ids`, call ids a client rewrote are put back to the ids maxproxy issued in the chat messages
    (when the rewrite is one-to-one within the request), so the history matches what the conversation store holds."""
    messages: list[Message] = []
    sources: list[str] = []
    call_sources: dict[tuple[int, int], str] = {}
    if request.instructions:
        messages.append(SystemMessage(content=request.instructions))
        sources.append("instructions")
    if isinstance(request.input, str):
        messages.append(UserMessage(content=request.input))
        sources.append("input")
    calls: dict[str, str] = {}  # client call id → where its function_call is
    answered: set[str] = set()
    for i, raw in enumerate(request.input if isinstance(request.input, list) else []):
        where = f"input[{i}]"
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind in ("message", "function_call_output"):
            _unsupported_part(raw, where)
        if kind == "message":
            messages.append(_message(_convert(raw, MessageItem, where), where))
            sources.append(where)
        elif kind == "function_call":
            call = _convert(raw, FunctionCallItem, where)
            if call.call_id in calls:
                raise errors.InvalidRequest(
                    f"{where}.call_id {call.call_id!r} repeats the call at {calls[call.call_id]}",
                    param=f"{where}.call_id",
                )
            calls[call.call_id] = where
            tool_call = ToolCall(id=call.call_id, function=FunctionCall(name=call.name, arguments=call.arguments))
            last = messages[-1] if messages else None
            if isinstance(last, AssistantMessage):  # one assistant turn: its text and all its calls
                last.tool_calls = [*(last.tool_calls or []), tool_call]
            else:
                messages.append(AssistantMessage(content=None, tool_calls=[tool_call]))
                sources.append(where)
            assistant = messages[-1]
            assert isinstance(assistant, AssistantMessage)
            assert assistant.tool_calls
            call_sources[(len(messages) - 1, len(assistant.tool_calls) - 1)] = where
        elif kind == "function_call_output":
            output = _convert(raw, FunctionCallOutputItem, where)
            if output.call_id not in calls:
                raise errors.InvalidRequest(
                    f"{where} answers call_id {output.call_id!r}, but no function_call before it in input has that "
                    "call_id (send the function_call items with their outputs)",
                    param=f"{where}.call_id",
                )
            if output.call_id in answered:
                raise errors.InvalidRequest(
                    f"{where} answers call_id {output.call_id!r} a second time", param=f"{where}.call_id"
                )
            answered.add(output.call_id)
            content = output.output if isinstance(output.output, str) else _parts(output.output, f"{where}.output")
            messages.append(ToolMessage(content=content, tool_call_id=output.call_id))
            sources.append(where)
        elif kind == "reasoning":
            continue  # an earlier answer's thinking: its encrypted content is not ours to read
        elif kind == "item_reference":
            raise errors.InvalidRequest(
                "item_reference needs a stored response; not supported yet (send the item itself)",
                param=f"{where}.id",
            )
        elif kind is None:
            raise errors.InvalidRequest(f"{where} has neither type nor role", param=f"{where}.type")
        else:
            raise errors.InvalidRequest(
                f"Input items of type {kind!r} are not supported (message, function_call, function_call_output, "
                "reasoning are)",
                param=f"{where}.type",
            )

    ignored = _ignored(request)
    chat_tools, tool_sources, namespaces, echo_tools = _tools(request.tools, ignored)
    tool_choice = _tool_choice(request.tool_choice)
    try:
        tools.toolset(chat_tools, tool_choice, request.parallel_tool_calls)
    except errors.InvalidRequest as exc:
        if exc.param and (m := re.match(r"tools\[(\d+)\](?:\.function)?(.*)", exc.param)):
            new = tool_sources[int(m[1])] + m[2]
            exc.message, exc.param = exc.message.replace(exc.param, new), new
            exc.args = (exc.message,)
        raise

    rewritten = _rewritten(calls) if restore_ids else {}
    if rewritten:
        for message in messages:
            if isinstance(message, AssistantMessage):
                for tool_call in message.tool_calls or []:
                    tool_call.id = rewritten.get(tool_call.id, tool_call.id)
            elif isinstance(message, ToolMessage):
                message.tool_call_id = rewritten.get(message.tool_call_id, message.tool_call_id)

    reasoning = request.reasoning or Reasoning()
    text_format = _text_format(request.text)
    return Translated(
        messages=messages,
        tools=chat_tools or None,
        tool_choice=tool_choice,
        parallel_tool_calls=request.parallel_tool_calls,
        max_output_tokens=request.max_output_tokens,
        effort=reasoning.effort,
        response_format=text_format,
        summary=reasoning.summary is not None,
        ignored=ignored,
        store=request.store is not False,
        previous_response_id=request.previous_response_id,
        prompt_cache_key=request.prompt_cache_key,
        user=request.user or request.safety_identifier,
        metadata=request.metadata,
        namespaces=namespaces,
        rewritten_ids=rewritten,
        sources=sources,
        call_sources=call_sources,
        tool_sources=tool_sources,
        echo=_echo(request, echo_tools),
    )


def _rewritten(calls: dict[str, str]) -> dict[str, str]:
    mapping = {client: issued for client in calls if (issued := issued_id(client)) is not None and issued != client}
    targets = list(mapping.values()) + [c for c in calls if c not in mapping]
    if len(set(targets)) != len(targets):
        return {}  # two of the client's ids would become one: keep them as sent
    return mapping


def _message(item: MessageItem, where: str) -> Message:
    if item.role == "assistant":
        if isinstance(item.content, str):
            return AssistantMessage(content=item.content)
        refusals = [p.refusal for p in item.content if isinstance(p, Refusal)]
        parts = [p for p in item.content if not isinstance(p, Refusal)]
        return AssistantMessage(
            content=_parts(parts, f"{where}.content") if parts else None, refusal="\n".join(refusals) or None
        )
    if isinstance(item.content, str):
        content: str | list[Any] = item.content
    else:
        for j, part in enumerate(item.content):
            if isinstance(part, Refusal):
                raise errors.InvalidRequest(
                    f"{where}.content[{j}]: refusal parts belong in assistant messages",
                    param=f"{where}.content[{j}].type",
                )
        content = _parts(item.content, f"{where}.content")
    if item.role == "system":
        return SystemMessage(content=content)
    if item.role == "developer":
        return DeveloperMessage(content=content)
    return UserMessage(content=content)


def _parts(parts: list[Any], where: str) -> list[Any]:
    converted: list[Any] = []
    for j, part in enumerate(parts):
        if isinstance(part, InputText | OutputText):
            converted.append(TextPart(text=part.text))
        elif isinstance(part, InputImage):
            if part.image_url is None:
                raise errors.InvalidRequest(
                    f"{where}[{j}] needs image_url (a data: URL); file_id needs a file store maxproxy does not have",
                    param=f"{where}[{j}].image_url",
                )
            converted.append(ImagePart(image_url=ImageURL(url=part.image_url, detail=part.detail)))
    return converted


def _unsupported_part(item: dict[str, Any], where: str) -> None:
    content = item.get("content", item.get("output"))
    for j, part in enumerate(content if isinstance(content, list) else []):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _UNSUPPORTED_PARTS:
            field = "content" if "content" in item else "output"
            raise errors.InvalidRequest(
                f"{kind} parts are not supported ({_UNSUPPORTED_PARTS[kind]} cannot be passed to the CLI)",
                param=f"{where}.{field}[{j}].type",
            )


def _tools(
    entries: list[dict[str, Any]] | None, ignored: list[str]
) -> tuple[list[dict[str, Any]], list[str], dict[str, str], list[dict[str, Any]]]:
    """Chat-shaped function tools, the Responses param each came from, the namespace map, and the echo."""
    chat: list[dict[str, Any]] = []
    sources: list[str] = []
    namespaces: dict[str, str] = {}
    echo: list[dict[str, Any]] = []
    for i, entry in enumerate(entries or []):
        where = f"tools[{i}]"
        kind = entry.get("type")
        if kind == "function":
            chat.append(_function(entry))
            sources.append(where)
            echo.append(_echo_function(entry))
        elif kind == "namespace":
            name = entry.get("name")
            inner = entry.get("tools", entry.get("functions"))
            if not isinstance(name, str) or not isinstance(inner, list):
                raise errors.InvalidRequest(
                    f"{where} (a namespace tool) needs a name and a list of tools", param=f"{where}.tools"
                )
            key = "tools" if "tools" in entry else "functions"
            for j, function in enumerate(inner):
                at = f"{where}.{key}[{j}]"
                if not isinstance(function, dict) or function.get("type", "function") != "function":
                    kind_j = function.get("type") if isinstance(function, dict) else None
                    raise errors.InvalidRequest(
                        f"Only function tools are supported inside a namespace, not {kind_j!r}", param=f"{at}.type"
                    )
                chat.append(_function(function))
                sources.append(at)
                echo.append(_echo_function(function))
                if isinstance(function.get("name"), str):
                    namespaces[function["name"]] = name
        elif kind in WEB_SEARCH and entry.get("external_web_access") is False:
            ignored.append(f"tools.{kind}")  # Codex sends it with every request, marked optional
        elif kind in WEB_SEARCH or kind in HOSTED_TOOLS:
            raise errors.InvalidRequest(
                f"The hosted tool type {kind!r} is not supported: maxproxy serves function tools only",
                param=f"{where}.type",
            )
        else:
            raise errors.InvalidRequest(
                f"Tools of type {kind!r} are not supported: maxproxy serves function tools only", param=f"{where}.type"
            )
    return chat, sources, namespaces, echo


def _function(entry: dict[str, Any]) -> dict[str, Any]:
    function = {k: entry[k] for k in ("name", "description", "parameters", "strict") if entry.get(k) is not None}
    return {"type": "function", "function": function}


def _echo_function(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": entry.get("name"),
        "description": entry.get("description"),
        "parameters": entry.get("parameters"),
        "strict": entry.get("strict"),
    }


def _tool_choice(value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    raise errors.InvalidRequest(
        'tool_choice must be "none", "auto", "required" or {"type": "function", "name": ...}', param="tool_choice"
    )


def _text_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not tools.NAME.fullmatch(name):
            raise errors.InvalidRequest(
                "text.format.name must be 1-64 letters, digits, '_' or '-'", param="text.format.name"
            )
        if not isinstance(schema, dict):
            raise errors.InvalidRequest("text.format.schema must be a JSON Schema object", param="text.format.schema")
        json_schema: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                json_schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": json_schema}
    raise errors.InvalidRequest(
        f"text.format.type must be text, json_object or json_schema, not {fmt.get('type')!r}",
        param="text.format.type",
    )


def _ignored(request: ResponsesRequest) -> list[str]:
    names = [
        name
        for name in ("temperature", "top_p", "top_logprobs", "max_tool_calls", "service_tier")
        if getattr(request, name) is not None
    ]
    if request.truncation == "auto":
        names.append("truncation")
    if request.include:
        names.append("include")  # no encrypted reasoning, logprobs or sources to include
    if request.text is not None and request.text.verbosity is not None:
        names.append("text.verbosity")
    return names


def _echo(request: ResponsesRequest, echo_tools: list[dict[str, Any]]) -> dict[str, Any]:
    choice = request.tool_choice
    if isinstance(choice, dict):
        choice = {"type": "function", "name": choice["name"]}
    reasoning = request.reasoning or Reasoning()
    return {
        "instructions": request.instructions,
        "tools": echo_tools,
        "tool_choice": choice or "auto",
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "store": request.store is not False,
        "text": {"format": (request.text.format if request.text and request.text.format else {"type": "text"})},
        "reasoning": {"effort": reasoning.effort, "summary": reasoning.summary},
        "metadata": request.metadata or {},
        "temperature": request.temperature,
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "user": request.user,
        "prompt_cache_key": request.prompt_cache_key,
        "safety_identifier": request.safety_identifier,
        "background": False,
    }


# --- output --------------------------------------------------------------------------------------------------------

Event = tuple[str, bytes]  # (SSE event name, JSON payload)
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]

_encoder = msgspec.json.Encoder()
# `ResponseError.code` is a closed set in the SDK: maxproxy's own code goes into the message and `type`.
_FAILED_CODES = {429: "rate_limit_exceeded"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24 if prefix == 'resp' else 16)}"


def sse(event: Event) -> bytes:
    """One event as SSE bytes (`event:` and `data:` lines)."""
    return b"event: " + event[0].encode() + b"\ndata: " + event[1] + b"\n\n"


def error_body(exc: errors.ProxyError) -> bytes:
    """An error before any output, in the OpenAI shape (`{"error": {message, type, param, code}}`)."""
    return exc.body()


class ResponseStream:
    """One response: fed neutral turn events, it returns the SSE events each adds (empty lists where none is due) and
    keeps the response object, whose final form `response()` gives (what a non-streaming answer sends).

    Items open and close as the turn goes: text opens a `message` item, thinking a `reasoning` item (its summary),
    each tool call is one whole `function_call` item; a new kind of event closes the open item first, so each item's
    `output_item.added` comes before its deltas and its `output_item.done` before the next item's `added`."""

    def __init__(
        self,
        model: str,
        *,
        echo: dict[str, Any] | None = None,
        namespaces: dict[str, str] | None = None,
        response_id: str | None = None,
        created_at: int | None = None,
    ) -> None:
        self.id = response_id or new_id("resp")
        self.model = model
        self.created_at = created_at if created_at is not None else int(time.time())
        self.echo = dict(echo or _DEFAULT_ECHO)
        self.namespaces = namespaces or {}
        self.output: list[dict[str, Any]] = []
        self.status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
        self.usage_: dict[str, Any] | None = None
        self.incomplete_details: dict[str, Any] | None = None
        self.error_: dict[str, Any] | None = None
        self._sequence = 0
        self._started = False
        self._open: dict[str, Any] | None = None  # the item that takes deltas
        self._text: list[str] = []

    @classmethod
    def for_request(cls, request: ResponsesRequest, translated: Translated, **kwargs: Any) -> ResponseStream:
        return cls(request.model, echo=translated.echo, namespaces=translated.namespaces, **kwargs)

    @property
    def ended(self) -> bool:
        return self.status != "in_progress"

    # The events a turn feeds in.

    def start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def text(self, delta: str) -> list[Event]:
        if not delta or self.ended:
            return []
        events = self.start()
        if self._open is None or self._open["type"] != "message":
            events += self._close()
            opened: dict[str, Any] = {
                "id": new_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events += self._add(opened)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self._event("response.content_part.added", **self._at(opened), content_index=0, part=part))
            opened["content"].append(dict(part))
        item = self._open
        assert item is not None
        self._text.append(delta)
        events.append(
            self._event("response.output_text.delta", **self._at(item), content_index=0, delta=delta, logprobs=[])
        )
        return events

    def reasoning(self, delta: str) -> list[Event]:
        if not delta or self.ended:
            return []
        events = self.start()
        if self._open is None or self._open["type"] != "reasoning":
            events += self._close()
            opened: dict[str, Any] = {
                "id": new_id("rs"),
                "type": "reasoning",
                "summary": [],
                "status": "in_progress",
            }
            events += self._add(opened)
            part = {"type": "summary_text", "text": ""}
            events.append(
                self._event("response.reasoning_summary_part.added", **self._at(opened), summary_index=0, part=part)
            )
        item = self._open
        assert item is not None
        self._text.append(delta)
        events.append(
            self._event("response.reasoning_summary_text.delta", **self._at(item), summary_index=0, delta=delta)
        )
        return events

    def tool_call(self, call_id: str, name: str, arguments: str) -> list[Event]:
        """A whole call (maxproxy checks a call before the client may see it, so it never streams in pieces)."""
        if self.ended:
            return []
        events = self.start() + self._close()
        item: dict[str, Any] = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        if name in self.namespaces:
            item["namespace"] = self.namespaces[name]
        events += self._add(item)
        at = self._at(item)
        if arguments:
            events.append(self._event("response.function_call_arguments.delta", **at, delta=arguments))
        events.append(self._event("response.function_call_arguments.done", **at, name=name, arguments=arguments))
        item["arguments"] = arguments
        events += self._close()
        return events

    def usage(
        self,
        input_tokens: int,
        cached_tokens: int,
        output_tokens: int,
        reasoning_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> list[Event]:
        """The turn's usage; `input_tokens` counts every prompt token, cached (read) and cache-written ones included
        (OpenAI's meaning); the current SDK requires `cache_write_tokens`."""
        self.usage_ = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": cache_write_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        }
        return []

    def finish(self, reason: FinishReason) -> list[Event]:
        if self.ended:
            return []
        events = self.start()
        if reason in ("length", "content_filter"):
            events += self._close("incomplete")
            self.status = "incomplete"
            self.incomplete_details = {"reason": "max_output_tokens" if reason == "length" else "content_filter"}
            events.append(self._event("response.incomplete", response=self.response()))
        else:
            events += self._close()
            self.status = "completed"
            events.append(self._event("response.completed", response=self.response()))
        return events

    def error(self, status: int, type: str, code: str | None, message: str, param: str | None = None) -> list[Event]:
        """The turn failed after the stream opened: the open item ends incomplete and `response.failed` follows."""
        if self.ended:
            return []
        events = self.start() + self._close("incomplete")
        self.status = "failed"
        self.error_ = {
            "code": _FAILED_CODES.get(status, "server_error"),
            "message": f"{message} ({code})" if code else message,
            "type": type,
            "param": param,
        }
        events.append(self._event("response.failed", response=self.response()))
        return events

    def fail(self, exc: errors.ProxyError) -> list[Event]:
        return self.error(exc.status, exc.type, exc.code, exc.message, exc.param)

    def feed(self, event: TurnEvent) -> list[Event]:
        """The events one of the turn core's events adds (a keepalive adds none: the handler's SSE comment)."""
        if isinstance(event, TextDelta):
            return self.text(event.text)
        if isinstance(event, ReasoningDelta):
            return self.reasoning(event.text)
        if isinstance(event, ToolCallEvent):
            return self.tool_call(event.id, event.name, event.arguments)
        if isinstance(event, Keepalive):
            return []
        assert isinstance(event, Outcome)
        usage = event.usage
        self.usage(usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens)
        if event.error is not None:
            return self.fail(event.error)
        return self.finish(event.finish_reason)

    # The response object.

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.model,
            "output": [_copy(item) for item in self.output],
            "usage": self.usage_,
            "incomplete_details": self.incomplete_details,
            "error": self.error_,
            **self.echo,
        }

    def body(self) -> bytes:
        return _encoder.encode(self.response())

    # Internals.

    def _event(self, type: str, **fields: Any) -> Event:
        payload = {"type": type, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return type, _encoder.encode(payload)

    def _at(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"output_index": len(self.output) - 1, "item_id": item["id"]}

    def _add(self, item: dict[str, Any]) -> list[Event]:
        self.output.append(item)
        self._open = item
        self._text = []
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=_copy(item))]

    def _close(self, status: Literal["completed", "incomplete"] = "completed") -> list[Event]:
        item = self._open
        if item is None:
            return []
        self._open = None
        at = self._at(item)
        events: list[Event] = []
        text = "".join(self._text)
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            events.append(self._event("response.output_text.done", **at, content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", **at, content_index=0, part=part))
            item["content"] = [part]
        elif item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            events.append(self._event("response.reasoning_summary_text.done", **at, summary_index=0, text=text))
            events.append(self._event("response.reasoning_summary_part.done", **at, summary_index=0, part=part))
            item["summary"] = [part]
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=at["output_index"], item=_copy(item)))
        return events


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    copied = dict(item)
    for key in ("content", "summary"):
        if key in copied:
            copied[key] = [dict(part) for part in copied[key]]
    return copied


_DEFAULT_ECHO: dict[str, Any] = {
    "instructions": None,
    "tools": [],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "max_output_tokens": None,
    "previous_response_id": None,
    "store": True,
    "text": {"format": {"type": "text"}},
    "reasoning": {"effort": None, "summary": None},
    "metadata": {},
    "temperature": None,
    "top_p": None,
    "truncation": "disabled",
    "background": False,
}


class Answer:
    """One response's rendering of the core's events (`api.sse.Rendering`): whole SSE frames (`event:` + `data:`)
    while streaming, the response object as the JSON body otherwise."""

    content_type = "application/json"
    done: bytes | None = None  # the Responses stream ends with its terminal event, not a sentinel
    framed = True

    def __init__(self, request: ResponsesRequest, translated: Translated) -> None:
        self.translated = translated
        self.stream = ResponseStream.for_request(request, translated)

    def headers(self, turn: dict[str, str]) -> dict[str, str]:
        headers = dict(turn)
        if self.translated.ignored:
            headers["x-maxproxy-ignored-params"] = ",".join(self.translated.ignored)
        return headers

    def opening(self) -> list[bytes]:
        return [sse(event) for event in self.stream.start()]

    def event(self, event: TurnEvent) -> list[bytes]:
        return [sse(item) for item in self.stream.feed(event)]

    def body(self, outcome: Outcome) -> bytes:
        # A whole answer comes as its outcome alone: its thinking, its text, then its calls, as the model wrote them.
        self.stream.reasoning(outcome.reasoning)
        self.stream.text(outcome.text)
        for call in outcome.calls:
            self.stream.feed(call)
        self.stream.feed(outcome)
        return self.stream.body()
