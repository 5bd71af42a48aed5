"""The HTTP side of an answer: an aiohttp-sse `EventSourceResponse` (headers, comment keepalives while the CLI is
silent, stalled-peer detection) opened lazily — so an error that comes before the first token can still be a real
HTTP status — with `data:` lines written as ready-made bytes, one write per chunk on the hot path; and the two loops
that take a turn core's events to the client through a wire protocol's `Rendering`, as a stream (`relay`) or as one
JSON body (`complete`). Both can await an `Ending` once the outcome is rendered and before it is written (where a
stored response is kept, so a client that reads its terminal event finds it stored).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from maxproxy.turns.core import Event, Outcome, Turn

Ending = Callable[[Outcome], Awaitable[None]]


class Rendering(Protocol):
    """What a wire protocol makes of a turn's events (`wire.chat.Answer`)."""

    content_type: str
    done: bytes | None  # the stream's last payload, if the protocol has one
    framed: bool  # payloads are whole SSE frames (`event: ...` lines): written as they are, not as `data:` lines

    def headers(self, turn: dict[str, str]) -> dict[str, str]: ...

    def opening(self) -> Sequence[bytes]: ...  # sent with the headers

    def event(self, event: Event) -> Iterable[bytes]: ...  # an `Outcome` too: the stream's end, or its failure

    def body(self, outcome: Outcome) -> bytes: ...


class Stream:
    def __init__(
        self,
        request: web.Request,
        headers: dict[str, str],
        keepalive: float,
        first: Sequence[bytes],
        *,
        framed: bool = False,
    ) -> None:
        self.request = request
        self.response = EventSourceResponse(headers=headers, sep="\n", allow_all_methods=True, ping_interval=keepalive)
        self._first = first  # e.g. the role chunk, sent with the headers
        self._framed = framed

    @property
    def open(self) -> bool:
        return self.response.prepared

    async def send(self, payload: bytes) -> None:
        # Payloads are JSON from msgspec (newlines escaped) or `[DONE]`: one `data:` line each, no re-splitting.
        if not self.response.prepared:
            await self.response.prepare(self.request)
            for first in self._first:
                await self.response.write(first if self._framed else b"data: " + first + b"\n\n")
        if payload:
            await self.response.write(payload if self._framed else b"data: " + payload + b"\n\n")

    async def close(self, done: bytes | None = b"[DONE]") -> EventSourceResponse:
        await self.send(done or b"")
        self.response.stop_streaming()
        await self.response.wait()
        return self.response


async def relay(
    request: web.Request, turn: Turn, rendering: Rendering, keepalive: float, ending: Ending | None = None
) -> web.StreamResponse:
    """Stream the turn: headers wait for the first event (a keepalive tick opens the stream too); an error before
    it is raised, with its own status. The stream's last events (the outcome's) are written only once the turn has
    recorded itself: a client sends its next turn the moment it reads the end, and that turn must find this one
    recorded, or it would start over (measured: with a 0.3 s store write, every such follow-up replayed)."""
    out: Stream | None = None
    last: list[bytes] | None = None  # the outcome's events, held until the turn is recorded
    try:
        async with contextlib.aclosing(turn.events()) as events:
            async for event in events:
                if out is None:  # the first event: a keepalive tick opens the stream as well as a token
                    headers = rendering.headers(turn.headers)
                    out = Stream(request, headers, keepalive, rendering.opening(), framed=rendering.framed)
                    await out.send(b"")
                if isinstance(event, Outcome):
                    last = list(rendering.event(event))  # rendered, so the answer is whole before `ending` runs
                    if ending is not None:
                        await ending(event)
                    continue  # asking for more lets the turn record itself
                for payload in rendering.event(event):
                    await out.send(payload)
            assert out is not None, "a turn yields an Outcome or raises"
            assert last is not None, "a turn yields an Outcome or raises"
            for payload in last:
                await out.send(payload)
            await out.close(rendering.done)
    except (ConnectionResetError, TimeoutError):
        if out is None:
            raise
        # The client went away or stopped reading; closing the events interrupts and stops the turn.
        turn.caller.access.disconnected = True
    assert out is not None
    return out.response


async def complete(turn: Turn, rendering: Rendering, ending: Ending | None = None) -> web.Response:
    """The whole answer as one body (a non-streaming turn raises its errors)."""
    result: Outcome | None = None
    async with contextlib.aclosing(turn.events()) as events:
        async for event in events:
            if isinstance(event, Outcome):
                result = event
    assert result is not None, "a turn yields an Outcome or raises"
    assert result.error is None, "a non-streaming turn raises its errors"
    headers = rendering.headers(turn.headers)
    body = rendering.body(result)
    if ending is not None:
        await ending(result)
    return web.Response(body=body, content_type=rendering.content_type, headers=headers)
