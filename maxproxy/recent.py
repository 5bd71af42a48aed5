"""The last requests that ran a turn, newest first, for the status page: when, which key, model and protocol, the
HTTP status, time to first token, duration and tokens — never a prompt or an answer. A bounded ring in memory; it
starts empty after a restart (the usage rows are what lasts).
"""

from __future__ import annotations

import collections

import msgspec


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    time: float  # epoch seconds when the request came
    request_id: str
    key: str | None  # the API key's name (None: refused before it was known)
    model: str | None
    protocol: str  # "chat", "responses", "messages"
    path: str
    status: int  # 499: the client went away
    stream: bool | None
    ttft_ms: float | None  # streams only
    duration_ms: float
    input_tokens: int | None
    output_tokens: int | None


class Recent:
    def __init__(self, size: int = 50) -> None:
        self._ring: collections.deque[Entry] = collections.deque(maxlen=size)

    def add(self, entry: Entry) -> None:
        self._ring.appendleft(entry)

    def entries(self) -> list[Entry]:
        return list(self._ring)
