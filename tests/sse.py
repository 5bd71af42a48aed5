"""A small, strict SSE reader for asserting the exact wire format of maxproxy's streams."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Stream:
    data: list[str] = field(default_factory=list)  # every `data:` payload, in order
    comments: list[str] = field(default_factory=list)

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(d) for d in self.data if d != "[DONE]"]

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c.get("choices"))


async def read(response: aiohttp.ClientResponse) -> Stream:
    stream = Stream()
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            stream.data.append(line[len("data: ") :])
        elif line.startswith(":"):
            stream.comments.append(line)
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return stream
