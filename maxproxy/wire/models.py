"""The model list (`GET /v1/models[/{id}]`) in two shapes: OpenAI's, which every OpenAI-compatible client reads, and
Anthropic's (`{type: "model", id, display_name, created_at}` cards in pages with `has_more`, `first_id`, `last_id`;
paged by `limit`, `after_id` and `before_id` as the Anthropic SDKs send them), for requests that carry an
`anthropic-version` header.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Literal

from msgspec import Struct

from maxproxy import errors
from maxproxy.settings import Model

DEFAULT_LIMIT, MAX_LIMIT = 20, 1000  # Anthropic's own page size and bound


class ModelCard(Struct):
    id: str
    created: int
    owned_by: str = "anthropic"
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


class AnthropicModel(Struct):
    id: str
    display_name: str
    created_at: str  # RFC 3339
    max_tokens: int  # the most a request's `max_tokens` may ask for
    type: Literal["model"] = "model"
    lifecycle: Literal["active"] = "active"


class AnthropicModelList(Struct):
    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


def anthropic_card(name: str, model: Model) -> AnthropicModel:
    created = dt.datetime.fromtimestamp(model.created, dt.UTC).isoformat().replace("+00:00", "Z")
    return AnthropicModel(
        id=name, display_name=model.display_name or name, created_at=created, max_tokens=model.max_output_tokens
    )


def anthropic_page(table: Mapping[str, Model], query: Mapping[str, str]) -> AnthropicModelList:
    """One page of the table: `after_id` starts after that id, `before_id` ends before it (the `limit` closest)."""
    names = list(table)
    limit = _limit(query.get("limit"))
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise errors.InvalidRequest("Give after_id or before_id, not both", param="before_id")
    if before is not None:
        end = _position(names, before, "before_id")
        page = names[max(0, end - limit) : end]
        more = end - limit > 0
    else:
        start = _position(names, after, "after_id") + 1 if after is not None else 0
        page = names[start : start + limit]
        more = start + limit < len(names)
    return AnthropicModelList(
        data=[anthropic_card(name, table[name]) for name in page],
        has_more=more,
        first_id=page[0] if page else None,
        last_id=page[-1] if page else None,
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}", param="limit")
    return limit


def _position(names: Sequence[str], name: str, param: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise errors.InvalidRequest(f"{param} {name!r} is not a model maxproxy serves", param=param) from None
