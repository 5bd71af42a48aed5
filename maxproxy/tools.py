"""The client's tools (OpenAI function calling): the request's `tools`, `tool_choice` and `parallel_tool_calls` as one
checked `Toolset`, the listing the CLI gets for them, and the rules a call must pass before it reaches the client.

The CLI hosts the tools as an SDK MCP server of maxproxy's (`claude.mcp`): the model sees them under their own names
with their own schemas. A call the model gets wrong (arguments that break the schema, a tool outside this request's
choice, a second call when `parallel_tool_calls` is false) never reaches the client: maxproxy answers it at once with
an error the model can read and correct. The upstream's own `tool_choice` is out of the CLI's reach, so `required`,
a named function and `none` are asked for in the turn's prompt and enforced by refusing calls that break them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jsonschema
import msgspec
import referencing
import referencing.exceptions
import referencing.jsonschema

from maxproxy import errors

SERVER = "client"  # the SDK MCP server's name: its permission rule is `mcp__client`
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
# The CLI keeps a tool result of up to 500,000 characters in the conversation and swaps a longer one for a file path
# and a 2 KB preview (measured), which a model without file tools cannot follow: longer results are cut here instead.
RESULT_LIMIT = 490_000

Choice = Literal["auto", "none", "required", "function"]
_encoder = msgspec.json.Encoder(order="sorted")


class Tool(msgspec.Struct, frozen=True):
    name: str
    description: str
    schema: dict[str, Any]


class Toolset(msgspec.Struct, frozen=True):
    tools: tuple[Tool, ...] = ()
    choice: Choice = "auto"
    forced: str | None = None  # the function `tool_choice` names
    parallel: bool = True

    def lists_like(self, other: Toolset) -> bool:
        """Whether the CLI's listing of `other` is this one's (the choice may differ). Agents send the same tools with
        every request and `toolset` returns the very same parsed tuple for them, so this is an identity check then."""
        return self.tools == other.tools

    def listing(self) -> list[dict[str, Any]]:
        """The MCP `tools/list` answer. Every tool is marked read-only so that the CLI dispatches the calls of one
        answer together (measured: it runs tools without the hint one after the other, waiting for each result), and
        carries a result size above the CLI's default limit for MCP tools."""
        return [
            {
                "name": t.name,
                "description": t.description,
                "inputSchema": t.schema,
                "annotations": {"readOnlyHint": True},
                "_meta": {"anthropic/maxResultSizeChars": RESULT_LIMIT + 10_000, "anthropic/alwaysLoad": True},
            }
            for t in self.tools
        ]

    def instructions(self) -> str | None:
        """What the turn's prompt must say for this tool choice, if anything."""
        notes: list[str] = []
        if self.choice == "none":
            notes.append("Do not call any tool in this answer: answer in text only.")
        elif self.choice == "required":
            notes.append("You must call at least one of the available tools in this answer.")
        elif self.choice == "function":
            notes.append(f"You must call the tool `{self.forced}` in this answer, and no other tool.")
        if not self.parallel and self.choice != "none":
            notes.append("Call at most one tool per answer; wait for its result before calling another.")
        if not notes:
            return None
        return "<tool_choice>\n" + "\n".join(notes) + "\n</tool_choice>"

    def refusal(self, name: str, arguments: Any, accepted: int) -> str | None:
        """Why a call may not go to the client (the model reads this as the tool's error result), or None.
        `accepted` counts the calls of the same answer already accepted."""
        if self.choice == "none":
            return "Tool calls are disabled for this answer (tool_choice is none). Answer in text instead."
        if self.choice == "function" and name != self.forced:
            return f"Only the tool `{self.forced}` may be called now (tool_choice names it)."
        tool = next((t for t in self.tools if t.name == name), None)
        if tool is None:
            return f"The tool `{name}` is not available in this conversation any more."
        if not self.parallel and accepted:
            return "Only one tool call per answer is allowed here; call this tool again after the first one's result."
        if not isinstance(arguments, dict):
            return "Tool arguments must be a JSON object."
        problem = _first_error(tool.schema, arguments)
        if problem is not None:
            return f"Invalid arguments for `{name}`: {problem}. Call it again with arguments that match its schema."
        return None


# No retrieval: a client's `$ref` to a URL must never make maxproxy fetch it (jsonschema's default registry would).
_NO_REMOTE: referencing.jsonschema.SchemaRegistry = referencing.Registry()


def validator(schema: dict[str, Any]) -> Any:
    """A validator for a checked schema (`schema_problem`) that never fetches a remote `$ref`."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, registry=_NO_REMOTE)


def _first_error(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    try:
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(arguments))
    except referencing.exceptions.Unresolvable as exc:  # checked at parse time; a nested path can still miss
        return f"the tool's schema cannot be applied ({exc})"
    if error is None:
        return None
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{error.message}" + (f" (at arguments{where})" if where else "")


def toolset(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any, parallel: bool | None) -> Toolset | None:
    """The request's tools, checked (a bad definition is a 400 naming the field); None when it has none."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise errors.InvalidRequest("tool_choice needs tools", param="tool_choice")
        return None
    parsed = _parse(_encoder.encode(tools))
    choice, forced = _choice(tool_choice, {t.name for t in parsed})
    return Toolset(tools=parsed, choice=choice, forced=forced, parallel=parallel is not False)


@functools.lru_cache(maxsize=64)
def _parse(raw: bytes) -> tuple[Tool, ...]:
    """Checked tool definitions. Checking a schema against the JSON Schema meta-schema costs ~1.5 ms, and agents
    send the same tools with every request: the result is kept per distinct `tools` value."""
    tools: list[Any] = msgspec.json.decode(raw)
    parsed: list[Tool] = []
    for i, entry in enumerate(tools):
        where = f"tools[{i}]"
        if entry.get("type", "function") != "function":
            raise errors.InvalidRequest(
                f"Only function tools are supported, not {entry.get('type')!r}", param=f"{where}.type"
            )
        function = entry.get("function")
        if not isinstance(function, Mapping):
            raise errors.InvalidRequest(f"{where}.function is missing", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise errors.InvalidRequest(
                f"{where}.function.name must be 1-64 letters, digits, '_' or '-'", param=f"{where}.function.name"
            )
        if any(t.name == name for t in parsed):
            raise errors.InvalidRequest(f"Duplicate tool name {name!r}", param=f"{where}.function.name")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise errors.InvalidRequest(
                f"{where}.function.description must be a string", param=f"{where}.function.description"
            )
        schema = function.get("parameters")
        if schema is None or schema == {}:
            schema = EMPTY_SCHEMA
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise errors.InvalidRequest(
                f"{where}.function.parameters must be a JSON Schema of type object",
                param=f"{where}.function.parameters",
            )
        if (problem := schema_problem(schema)) is not None:
            raise errors.InvalidRequest(f"{where}.function.parameters {problem}", param=f"{where}.function.parameters")
        parsed.append(Tool(name=name, description=description, schema={"type": "object", **schema}))
    return tuple(parsed)


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a JSON Schema maxproxy can apply (its meta-schema, Draft 2020-12 unless `$schema` says
    otherwise; every `$ref` inside it), as the end of a sentence that names it, or None."""
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        _check_refs(schema)
    except jsonschema.SchemaError as exc:
        return f"is not a valid JSON Schema: {exc.message}"
    except referencing.exceptions.Unresolvable as exc:
        return f"has a $ref that does not resolve within the schema: {exc}"
    return None


def _check_refs(schema: dict[str, Any]) -> None:
    """Every `$ref` must point inside the schema (the model's arguments are checked against it later)."""
    specification = referencing.jsonschema.specification_with(
        schema.get("$schema", ""), default=referencing.jsonschema.DRAFT202012
    )
    resource = specification.create_resource(schema)
    base = resource.id() or ""
    resolver = _NO_REMOTE.with_resource(base, resource).resolver(base_uri=base)
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                resolver.lookup(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _choice(value: Any, names: set[str]) -> tuple[Choice, str | None]:
    if value is None or value == "auto":
        return "auto", None
    if value in ("none", "required"):
        return value, None
    if isinstance(value, Mapping):
        function = value.get("function")
        name = function.get("name") if isinstance(function, Mapping) else value.get("name")
        if value.get("type") == "function" and isinstance(name, str):
            if name not in names:
                raise errors.InvalidRequest(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
            return "function", name
    raise errors.InvalidRequest(
        'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def call_id(tool_use_id: str) -> str:
    """The id a client sees for a call: letters and digits only (OpenClaw rewrites any other id, and the follow-up
    would then not find its call)."""
    return "call" + re.sub(r"[^A-Za-z0-9]", "", tool_use_id.removeprefix("toolu_"))


def block_id(client_id: str) -> str:
    """A client's call id as a `tool_use` id in replayed history (the upstream accepts letters, digits, _ and -)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", client_id)[:128] or "call"


def arguments_json(arguments: Any) -> str:
    return msgspec.json.encode(arguments).decode()


def result_text(text: str) -> str:
    if len(text) <= RESULT_LIMIT:
        return text
    return text[:RESULT_LIMIT] + f"\n[maxproxy: the tool result was cut from {len(text)} to {RESULT_LIMIT} characters]"
