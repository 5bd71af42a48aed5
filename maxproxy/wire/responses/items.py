"""Items as a stored response keeps them: the request's own input normalised to item objects with ids (what
`GET /v1/responses/{id}/input_items` lists; `item_reference`s replaced by the items they name), the input a
`previous_response_id` request continues from (the stored response's whole input, then its output items as input:
messages and function calls, reasoning left out as `to_chat` leaves it out), a 400's `param` moved back from that
expanded input to the client's own, and one page of a list of items. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from maxproxy import errors
from maxproxy.wire.responses.request import ResponsesRequest
from maxproxy.wire.responses.stream import new_id

Item = dict[str, Any]
_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
_CONTINUED = frozenset({"message", "function_call"})  # the output items a continuation carries


def references(request: ResponsesRequest) -> list[str]:
    """The ids the request's `item_reference` items name."""
    return [
        raw["id"]
        for raw in (request.input if isinstance(request.input, list) else [])
        if raw.get("type") == "item_reference" and isinstance(raw.get("id"), str)
    ]


def own_items(request: ResponsesRequest, referenced: dict[str, bytes]) -> list[Item]:
    """The request's input as item objects with ids (a string is one user message), each `item_reference` replaced
    by the stored item it names (`referenced`: id → JSON); an unknown one is a 404 naming it."""
    if request.input is None:
        return []
    if isinstance(request.input, str):
        return [_normalised({"role": "user", "content": request.input})]
    items: list[Item] = []
    for i, raw in enumerate(request.input):
        if raw.get("type") != "item_reference":
            items.append(_normalised(raw))
            continue
        found = referenced.get(ref) if isinstance(ref := raw.get("id"), str) else None
        if found is None:
            raise errors.NotFound(
                f"No stored item {raw.get('id')!r} (input[{i}] refers to it)",
                param=f"input[{i}].id",
                code="item_not_found",
            )
        items.append(msgspec.json.decode(found))
    return items


def continued(history: list[Item], response: Item) -> list[Item]:
    """What a request with `previous_response_id` goes on from: the response's whole input, then its output."""
    return [*history, *(item for item in response.get("output") or [] if item.get("type") in _CONTINUED)]


def expanded(request: ResponsesRequest, items: list[Item]) -> ResponsesRequest:
    """The request as a client that resent the whole input would have sent it."""
    return msgspec.structs.replace(request, input=items)


def shifted(exc: errors.ProxyError, offset: int) -> errors.ProxyError:
    """`exc` with its `input[k]` param counted in the client's own input again (the first `offset` items of the
    expanded input came from the stored response: a fault there names `previous_response_id`)."""
    if not offset or exc.param is None or not (m := re.match(r"input\[(\d+)\](.*)", exc.param)):
        return exc
    k = int(m[1])
    new = f"input[{k - offset}]{m[2]}" if k >= offset else "previous_response_id"
    exc.message = exc.message.replace(f"input[{k}]", new if k >= offset else "the previous response's input")
    exc.args = (exc.message,)
    exc.param = new
    return exc


def _normalised(raw: Item) -> Item:
    kind = raw.get("type", "message" if "role" in raw else None)
    item = dict(raw)
    if kind == "message":
        item["type"] = "message"
        if isinstance(content := raw.get("content"), str):
            if raw.get("role") == "assistant":
                item["content"] = [{"type": "output_text", "text": content, "annotations": []}]
            else:
                item["content"] = [{"type": "input_text", "text": content}]
    if kind in ("message", "function_call", "function_call_output"):
        item.setdefault("status", "completed")
    if not isinstance(item.get("id"), str) or not item["id"]:
        item["id"] = new_id(_PREFIXES.get(kind or "", "item"))
    return item


def page(items: list[Item], *, limit: int, order: Literal["asc", "desc"], after: str | None) -> dict[str, Any]:
    """One page of `items` (as sent) in OpenAI's list shape; `after` is the id the page starts after."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise errors.InvalidRequest(f"after: no item {after!r} in this response's input", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }
