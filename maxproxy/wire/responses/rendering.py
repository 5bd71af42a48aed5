"""One response's rendering of the turn core's events for `api.sse`: SSE frames while streaming, the response
object as the JSON body otherwise.
"""

from __future__ import annotations

from maxproxy.turns.core import Event as TurnEvent
from maxproxy.turns.core import Outcome
from maxproxy.wire.responses.request import ResponsesRequest
from maxproxy.wire.responses.stream import ResponseStream, sse
from maxproxy.wire.responses.translation import Translated


class Answer:
    """One response's rendering of the core's events (`api.sse.Rendering`): whole SSE frames (`event:` + `data:`)
    while streaming, the response object as the JSON body otherwise."""

    content_type = "application/json"
    done: bytes | None = None  # the Responses stream ends with its terminal event, not a sentinel
    framed = True

    def __init__(self, request: ResponsesRequest, translated: Translated) -> None:
        self.translated = translated
        self.stream = ResponseStream.for_request(request, translated)

    def headers(self, turn: dict[str, str]) -> dict[str, str]:
        headers = dict(turn)
        if self.translated.ignored:
            headers["x-maxproxy-ignored-params"] = ",".join(self.translated.ignored)
        return headers

    def opening(self) -> list[bytes]:
        return [sse(event) for event in self.stream.start()]

    def event(self, event: TurnEvent) -> list[bytes]:
        return [sse(item) for item in self.stream.feed(event)]

    def body(self, outcome: Outcome) -> bytes:
        # A whole answer comes as its outcome alone: its thinking, its text, then its calls, as the model wrote them.
        self.stream.reasoning(outcome.reasoning)
        self.stream.text(outcome.text)
        for call in outcome.calls:
            self.stream.feed(call)
        self.stream.feed(outcome)
        return self.stream.body()
