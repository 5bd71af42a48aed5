"""Structured outputs, whatever protocol asked for them: a response format as a checked `OutputSchema` (a 400 naming
the client's field when its schema is not a JSON Schema), the note the turn's prompt carries for it, and the check of
the answer — a Markdown code fence around it is taken off, the rest must be JSON that validates against the schema —
with the problems in words the model can act on when it is not (the turn core asks again with them, on the same
worker, within the same turn: `correction`). Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import msgspec
import referencing.exceptions

from maxproxy import errors, tools
from maxproxy.turns.messages import OutputSchema

JSON_OBJECT = OutputSchema(kind="json_object", schema={"type": "object"})
PROBLEMS = 5  # schema errors named to the model at once, so that one retry can fix them all
PROBLEM_LIMIT = 300  # characters of one problem (jsonschema quotes the offending value, which can be long)
_encoder = msgspec.json.Encoder()
_sorted = msgspec.json.Encoder(order="sorted")
# A whole answer in one fence (```json ... ```), or one fenced block among prose.
_WHOLE_FENCE = re.compile(r"\A\s*```[\w+-]*[ \t]*\n(?P<body>.*?)\n?[ \t]*```\s*\Z", re.DOTALL)
_INLINE_FENCE = re.compile(r"\A\s*```\s*(?P<body>[\[{].*?)\s*```\s*\Z", re.DOTALL)
_BLOCK = re.compile(r"```[\w+-]*[ \t]*\n(?P<body>.*?)\n?[ \t]*```", re.DOTALL)


# --- the request -------------------------------------------------------------------------------------------------


def json_schema(spec: Mapping[str, Any], param: str) -> OutputSchema:
    """A `json_schema` response format, checked; `param` names the client's object holding `name`, `schema`,
    `description` and `strict` (`response_format.json_schema`, `text.format`), so a 400 names the field."""
    name, schema, description, strict = (spec.get(k) for k in ("name", "schema", "description", "strict"))
    if not isinstance(name, str) or not tools.NAME.fullmatch(name):
        raise errors.InvalidRequest(f"{param}.name must be 1-64 letters, digits, '_' or '-'", param=f"{param}.name")
    if not isinstance(schema, dict):
        raise errors.InvalidRequest(f"{param}.schema must be a JSON Schema object", param=f"{param}.schema")
    if description is not None and not isinstance(description, str):
        raise errors.InvalidRequest(f"{param}.description must be a string", param=f"{param}.description")
    if strict is not None and not isinstance(strict, bool):
        raise errors.InvalidRequest(f"{param}.strict must be a boolean", param=f"{param}.strict")
    if (problem := _schema_problem(_sorted.encode(schema))) is not None:
        raise errors.InvalidRequest(f"{param}.schema {problem}", param=f"{param}.schema")
    return OutputSchema(kind="json_schema", schema=schema, name=name, description=description or None)


@functools.lru_cache(maxsize=64)
def _schema_problem(raw: bytes) -> str | None:
    """Checking a schema against its meta-schema costs about a millisecond, and a client sends the same response
    format with every request: the verdict is kept per distinct schema."""
    return tools.schema_problem(msgspec.json.decode(raw))


def instructions(output: OutputSchema) -> str:
    """The note at the end of the turn's final user message (as `tools.Toolset.instructions` adds its own)."""
    if output.kind == "json_object":
        ask = "Answer with one JSON object and nothing else"
    else:
        named = f" `{output.name}`" if output.name else ""
        ask = f"Answer with one JSON value that validates against the JSON Schema{named} below, and nothing else"
    lines = ["<response_format>", f"{ask}: no text before or after it, no Markdown code fence."]
    if output.description:
        lines.append(f"What it describes: {output.description}")
    if output.kind == "json_schema":
        lines.append(_encoder.encode(output.schema).decode())
    lines.append("</response_format>")
    return "\n".join(lines)


def correction(output: OutputSchema, problem: str) -> str:
    """The user line that asks for the answer again, saying what was wrong with it."""
    follow = "with one JSON object" if output.kind == "json_object" else "with the JSON that follows the schema above"
    return (
        "<response_format>\n"
        f"Your answer does not match the required response format: {problem}.\n"
        f"Answer again {follow} and nothing else: no text before or after it, no Markdown code fence.\n"
        "</response_format>"
    )


# --- the answer --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    text: str  # the JSON text when valid (fence taken off), else the answer as it came
    problem: str | None = None  # why it is not valid, in words for the model (None: valid)


def unfenced(text: str) -> str:
    """The answer without a Markdown code fence around the whole of it (and without surrounding whitespace)."""
    match = _WHOLE_FENCE.match(text) or _INLINE_FENCE.match(text)
    return (match["body"] if match else text).strip()


def check(output: OutputSchema, answer: str) -> Verdict:
    """Whether `answer` is JSON for `output`: the whole answer (unfenced), else the one fenced block among prose."""
    candidate = unfenced(answer)
    if not candidate:
        return Verdict(answer, "the answer is empty")
    value, problem = _decode(candidate)
    if problem is not None:
        blocks = [m["body"].strip() for m in _BLOCK.finditer(answer)]
        if len(blocks) != 1:
            return Verdict(answer, problem)
        candidate = blocks[0]
        value, problem = _decode(candidate)
        if problem is not None:
            return Verdict(answer, problem)
    problems = _schema_errors(output.schema, value)
    return Verdict(candidate) if not problems else Verdict(answer, problems)


def _decode(text: str) -> tuple[Any, str | None]:
    try:
        return msgspec.json.decode(text), None
    except msgspec.DecodeError as exc:
        return None, f"it is not JSON ({exc})"
    except RecursionError:
        return None, "its JSON nests too deep"


def _schema_errors(schema: dict[str, Any], value: Any) -> str | None:
    try:
        found = sorted(tools.validator(schema).iter_errors(value), key=jsonschema.exceptions.relevance, reverse=True)
    except referencing.exceptions.Unresolvable as exc:  # checked at parse time; a nested path can still miss
        return f"the schema cannot be applied ({exc})"
    except RecursionError:
        return "its JSON nests too deep to check"
    if not found:
        return None
    named = [_problem(error) for error in found[:PROBLEMS]]
    more = f"; and {len(found) - PROBLEMS} more" if len(found) > PROBLEMS else ""
    return "; ".join(named) + more


def _problem(error: jsonschema.ValidationError) -> str:
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    message = error.message
    if len(message) > PROBLEM_LIMIT:
        message = message[: PROBLEM_LIMIT - 1] + "…"
    return f"at {where}: {message}"
