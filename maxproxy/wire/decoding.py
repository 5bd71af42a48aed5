"""Request decoding every wire protocol shares: a msgspec decode whose every failure is a 400 that names where (bad
JSON, bad types, numbers out of range, strings that are not UTF-8, nesting too deep), and the bounds on free-form JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from maxproxy import errors

# Every number is bounded to what it can mean; for the output limit the CLI's own maximum (the model's lower one is
# checked in `prompt.build`). Free-form JSON (metadata, schemas, tool arguments) may nest `MAX_DEPTH` levels: deeper
# would exhaust the recursion of the decoder or of the schema checks further on.
CLI_MAX_OUTPUT_TOKENS = 128_000  # "Claude's response exceeded the 128000 output token maximum" (the CLI)
MAX_DEPTH = 64
TokenLimit = Annotated[int, Meta(ge=1, le=CLI_MAX_OUTPUT_TOKENS)]

T = TypeVar("T")


def decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """The request, or a 400 for anything a client can send wrong: bad JSON, bad types, numbers out of range,
    strings that are not UTF-8 (msgspec's UnicodeDecodeError) and nesting past `MAX_DEPTH` (past ~1,000 levels the
    decoder's own RecursionError, which cannot say where). Free-form fields are checked by the protocol (`too_deep`).
    """
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        param = where.rstrip("`").lstrip(".").replace("[...]", "") or None  # msgspec's "[...]": a dict's value
        raise errors.InvalidRequest(
            f"Invalid request: {message}" + (f" (at {param})" if param else ""), param=param
        ) from None
    except msgspec.DecodeError as exc:
        raise errors.InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except UnicodeDecodeError as exc:
        raise errors.InvalidRequest(
            f"The request body is not valid JSON: a string in it is not valid UTF-8 ({exc.reason})",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise errors.InvalidRequest(
            f"The request body nests JSON deeper than the {MAX_DEPTH} levels maxproxy accepts", code="too_deep"
        ) from None


def too_deep_field(deep: str | None) -> None:
    """A 400 for the free-form field `deep` that nests too deep (nothing for None)."""
    if deep is not None:
        raise errors.InvalidRequest(
            f"{deep} nests JSON deeper than the {MAX_DEPTH} levels maxproxy accepts", param=deep, code="too_deep"
        )


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests objects or arrays more than `limit` levels (walked level by level, without recursion)."""
    level: list[Any] = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        below: list[Any] = []
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, dict | list):
                    below.append(child)
        if not below:
            return False
        level = below
    return True


def too_deep_arguments(raw: str) -> bool:
    """Whether a tool call's `arguments` string is JSON that nests more than `MAX_DEPTH` levels."""
    if raw.count("[") + raw.count("{") <= MAX_DEPTH:  # cannot nest deeper: no need to decode it
        return False
    try:
        return too_deep(msgspec.json.decode(raw))
    except msgspec.DecodeError:
        return False  # not JSON: the prompt passes it on as text
    except RecursionError:
        return True
