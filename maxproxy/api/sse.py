"""The SSE side of a streamed answer: an aiohttp-sse `EventSourceResponse` (headers, comment keepalives while the
CLI is silent, stalled-peer detection) opened lazily — so an error that comes before the first token can still be a
real HTTP status — with `data:` lines written as ready-made bytes, one write per chunk on the hot path.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp_sse import EventSourceResponse


class Stream:
    def __init__(self, request: web.Request, headers: dict[str, str], keepalive: float, first: bytes) -> None:
        self.request = request
        self.response = EventSourceResponse(headers=headers, sep="\n", allow_all_methods=True, ping_interval=keepalive)
        self._first = first  # the role chunk, sent with the headers

    @property
    def open(self) -> bool:
        return self.response.prepared

    async def send(self, payload: bytes) -> None:
        # Payloads are JSON from msgspec (newlines escaped) or `[DONE]`: one `data:` line each, no re-splitting.
        if not self.response.prepared:
            await self.response.prepare(self.request)
            await self.response.write(b"data: " + self._first + b"\n\n")
        if payload:
            await self.response.write(b"data: " + payload + b"\n\n")

    async def close(self) -> EventSourceResponse:
        await self.send(b"[DONE]")
        self.response.stop_streaming()
        await self.response.wait()
        return self.response
