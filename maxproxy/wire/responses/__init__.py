"""The OpenAI Responses API (`POST /v1/responses`) as a wire protocol: the request (`request`), its translation into
the neutral turn (`translation`), the response object and its SSE events (`stream`), and the rendering `api.sse`
drives (`rendering`). Pure: no I/O.
"""

from maxproxy.wire.responses.rendering import Answer
from maxproxy.wire.responses.request import HOSTED_TOOLS, WEB_SEARCH, ResponsesRequest, decode_request
from maxproxy.wire.responses.stream import Event, ResponseStream, error_body, new_id, sse
from maxproxy.wire.responses.translation import Translated, issued_id, to_chat, to_turn

__all__ = [
    "HOSTED_TOOLS",
    "WEB_SEARCH",
    "Answer",
    "Event",
    "ResponseStream",
    "ResponsesRequest",
    "Translated",
    "decode_request",
    "error_body",
    "issued_id",
    "new_id",
    "sse",
    "to_chat",
    "to_turn",
]
