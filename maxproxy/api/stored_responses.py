"""Stored responses as the Responses handlers use them: a `POST /v1/responses` request's `previous_response_id` and
`item_reference`s resolved against the caller's stored responses into the whole input a resending client would send
(`Thread.load`), the response stored once it reached its terminal status (`Thread.keep`: awaited by `api.sse` after
the terminal event is rendered and before it is written, so a client that uses the id at once finds it), and the
`GET`/`DELETE /v1/responses/{id}[/input_items]` answers. Everything is per owner (another key's id is a 404) and not
older than `session_ttl_days`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
import structlog
from aiohttp import web

from maxproxy import errors
from maxproxy.sessions import Sessions
from maxproxy.store import ResponseStore, StoredResponse
from maxproxy.turns.core import Outcome
from maxproxy.wire import responses
from maxproxy.wire.responses import items

log = structlog.get_logger("maxproxy.responses")
_encoder = msgspec.json.Encoder()


class PreviousNotFound(errors.NotFound):
    code = "previous_response_not_found"


class ResponseNotFound(errors.NotFound):
    code = "response_not_found"


class Thread:
    """One request's place among the owner's stored responses: what it goes on from and what it adds."""

    def __init__(self, sessions: Sessions, owner: str) -> None:
        self.store: ResponseStore = sessions.responses
        self.cutoff = sessions.cutoff
        self.owner = owner
        self.offset = 0  # how many items of the expanded input came from the previous response
        self.own: list[items.Item] = []
        self.history: list[items.Item] = []

    async def load(self, asked: responses.ResponsesRequest) -> responses.ResponsesRequest:
        """The request with its input expanded when it continues a stored response or refers to stored items (as
        it is otherwise: `to_chat` then reads the client's input as sent)."""
        wanted = items.references(asked)
        referenced = await self.store.items(self.owner, wanted, self.cutoff) if wanted else {}
        self.own = items.own_items(asked, referenced)
        prefix: list[items.Item] = []
        if asked.previous_response_id is not None:
            previous = await self.store.get(self.owner, asked.previous_response_id, self.cutoff)
            if previous is None:
                raise PreviousNotFound(
                    f"Previous response with id {asked.previous_response_id!r} not found.",
                    param="previous_response_id",
                )
            prefix = items.continued(msgspec.json.decode(previous.history), msgspec.json.decode(previous.response))
        self.offset = len(prefix)
        self.history = [*prefix, *self.own]
        if asked.previous_response_id is None and not wanted:
            return asked
        return items.expanded(asked, self.history)

    def shifted(self, exc: errors.ProxyError) -> errors.ProxyError:
        return items.shifted(exc, self.offset)

    async def keep(self, request: web.Request, stream: responses.ResponseStream, outcome: Outcome) -> None:
        """Store the response that reached its terminal status, unless its client is gone (a stream it left)."""
        if not stream.ended or request.transport is None or request.transport.is_closing():
            return
        response = stream.response()
        indexed = [*self.own, *response["output"]]
        row = StoredResponse(
            id=stream.id,
            owner=self.owner,
            created=time.time(),
            response=_encoder.encode(response),
            input=_encoder.encode(self.own),
            history=_encoder.encode(self.history),
        )
        try:
            await self.store.save(row, [(item["id"], _encoder.encode(item)) for item in indexed])
        except Exception:  # the answer stands; its id will not be found later
            log.exception("response_store_failed", response=stream.id)


async def retrieve(sessions: Sessions, owner: str, response_id: str) -> bytes:
    return (await _stored(sessions, owner, response_id)).response


async def delete(sessions: Sessions, owner: str, response_id: str) -> dict[str, Any]:
    if not await sessions.responses.delete(owner, response_id, sessions.cutoff):
        raise _missing(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


async def input_items(sessions: Sessions, owner: str, response_id: str, query: Mapping[str, str]) -> dict[str, Any]:
    try:
        limit = int(query.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        raise errors.InvalidRequest("limit must be a whole number from 1 to 100", param="limit") from None
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.InvalidRequest('order must be "asc" or "desc"', param="order")
    ordering: Literal["asc", "desc"] = "asc" if order == "asc" else "desc"
    stored = await _stored(sessions, owner, response_id)
    return items.page(msgspec.json.decode(stored.input), limit=limit, order=ordering, after=query.get("after"))


async def _stored(sessions: Sessions, owner: str, response_id: str) -> StoredResponse:
    stored = await sessions.responses.get(owner, response_id, sessions.cutoff)
    if stored is None:
        raise _missing(response_id)
    return stored


def _missing(response_id: str) -> errors.ProxyError:
    return ResponseNotFound(f"Response with id {response_id!r} not found.", param="response_id")
