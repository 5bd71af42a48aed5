"""One answer's rendering of the turn core's events for `api.sse`: Anthropic's SSE frames while streaming, the
`message` object as the JSON body otherwise; and its headers (the request id where the Anthropic SDKs read it, the
fields and betas that were not applied).
"""

from __future__ import annotations

import msgspec

from maxproxy.turns.core import Event as TurnEvent
from maxproxy.turns.core import Outcome
from maxproxy.wire.messages.request import MessagesRequest
from maxproxy.wire.messages.stream import MessageStream
from maxproxy.wire.messages.translation import Translated


class Answer:
    """One message's rendering of the core's events (`api.sse.Rendering`)."""

    content_type = "application/json"
    done: bytes | None = None  # the stream ends with `message_stop` (or `error`), not a sentinel
    framed = True

    def __init__(
        self, request: MessagesRequest, translated: Translated, *, request_id: str | None, betas: list[str]
    ) -> None:
        self.translated = translated
        self.request_id = request_id
        self.betas = betas
        self.stream = MessageStream(request.model, thinking=translated.thinking, omit_thinking=translated.omit_thinking)

    def headers(self, turn: dict[str, str]) -> dict[str, str]:
        headers = dict(turn)
        if self.request_id:
            headers["request-id"] = self.request_id
        if self.translated.ignored:
            headers["x-maxproxy-ignored-params"] = ",".join(self.translated.ignored)
        if self.betas:
            headers["x-maxproxy-ignored-betas"] = ",".join(self.betas)
        return headers

    def opening(self) -> list[bytes]:
        return [self.stream.start()]

    def event(self, event: TurnEvent) -> list[bytes]:
        return self.stream.feed(event)

    def body(self, outcome: Outcome) -> bytes:
        return msgspec.json.encode(self.stream.message(outcome))
