"""Anthropic's Messages API (`POST /v1/messages`) as a wire protocol: the request (`request`), its translation into
the neutral turn (`translation`), the message object and its SSE events (`stream`), and the rendering `api.sse`
drives (`rendering`). Pure: no I/O.
"""

from maxproxy.wire.messages.rendering import Answer
from maxproxy.wire.messages.request import MessagesRequest, decode_request
from maxproxy.wire.messages.stream import MessageStream, error_event, new_id, usage
from maxproxy.wire.messages.translation import Translated, ignored_betas, translate

__all__ = [
    "Answer",
    "MessageStream",
    "MessagesRequest",
    "Translated",
    "decode_request",
    "error_event",
    "ignored_betas",
    "new_id",
    "translate",
    "usage",
]
