"""The Responses request in chat's terms (`to_chat`): input items become chat's message Structs, function and
namespace tools chat-shaped tools, `text.format` the neutral structured output; what the response object echoes,
what was ignored, and where each chat message came from (so a 400 raised on the neutral turn names the Responses field).

Call ids: maxproxy issues `call` + letters and digits (`tools.call_id`). Outputs are paired with the calls *in the
input the client sent*, by the id as sent, so a client that rewrites ids (OpenClaw turns `call000007` into
`call_call000007_fc_call000007_028de33e26` in both the call and its output) still pairs. `issued_id` recovers the id
maxproxy issued from a rewritten one: the id itself when it is `call` + letters and digits, else the first run of
letters and digits (between other characters) that is `call` followed by at least one more letter or digit.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from msgspec import Struct

from maxproxy import errors, tools
from maxproxy.turns import structured
from maxproxy.turns.messages import (
    AssistantMessage,
    DeveloperMessage,
    Effort,
    FunctionCall,
    ImagePart,
    ImageURL,
    Message,
    OutputSchema,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    TurnRequest,
    UserMessage,
)
from maxproxy.wire.responses.request import (
    HOSTED_TOOLS,
    UNSUPPORTED_PARTS,
    WEB_SEARCH,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputText,
    MessageItem,
    OutputText,
    Reasoning,
    Refusal,
    ResponsesRequest,
    TextConfig,
    convert_item,
)


class Translated(Struct, kw_only=True):
    """A Responses request in chat's terms: what the turn core gets, plus what the response object echoes."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None  # chat's shape: {"type": "function", "function": {...}}
    tool_choice: str | dict[str, Any] | None  # chat's shape
    parallel_tool_calls: bool | None
    max_output_tokens: int | None
    effort: Effort | None  # as chat's `reasoning_effort`
    output_schema: OutputSchema | None  # `text.format` as structured output (None for plain text)
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
        output_schema=translated.output_schema,
        conversation_id=hint if isinstance(hint := (translated.metadata or {}).get("conversation_id"), str) else None,
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
            messages.append(_message(convert_item(raw, MessageItem, where), where))
            sources.append(where)
        elif kind == "function_call":
            call = convert_item(raw, FunctionCallItem, where)
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
            output = convert_item(raw, FunctionCallOutputItem, where)
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
                "item_reference names a stored item: resolve it first (api.stored_responses) or send the item",
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
        output_schema=text_format,
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
        if kind in UNSUPPORTED_PARTS:
            field = "content" if "content" in item else "output"
            raise errors.InvalidRequest(
                f"{kind} parts are not supported ({UNSUPPORTED_PARTS[kind]} cannot be passed to the CLI)",
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


def _text_format(text: TextConfig | None) -> OutputSchema | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return structured.JSON_OBJECT
    if fmt.get("type") == "json_schema":
        return structured.json_schema(fmt, "text.format")
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
