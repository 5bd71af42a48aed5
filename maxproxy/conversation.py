"""Conversation identity: which conversation a chat request belongs to, and which of its messages are new.

A client may name its conversation (`X-Session-Id`, `metadata.conversation_id`, `prompt_cache_key`, `user`, in that
order); otherwise the conversation is recognised by its history. Every message is canonicalised (string content and
a single text part are the same; extra keys such as `name` or `reasoning_content` do not count; images count by the
hash of their data) and hashed into a chain, so that "the same history plus new messages" has, up to its last
assistant message, the same hash as the conversation's head after its previous turn. OpenClaw's internal-context user
messages (`<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>` … `<<<END_OPENCLAW_INTERNAL_CONTEXT>>>`) are left out of the chain:
OpenClaw sends one as the last message of every request and drops it from its place in the next, so with them no
later request would hash like the history it goes on with (they still reach the model as new messages). Identities
are always scoped to the caller (its API key), so two bots with identical histories never share a conversation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import msgspec

from maxproxy.turns.messages import (
    AssistantMessage,
    Content,
    DeveloperMessage,
    DocumentPart,
    ImagePart,
    Message,
    SystemMessage,
    ToolMessage,
    TurnRequest,
    UserMessage,
)

_encoder = msgspec.json.Encoder()
_sorted = msgspec.json.Encoder(order="sorted")
Part = tuple[str, ...]
# The delimiters of OpenClaw's internal runtime context (OpenClaw's INTERNAL_RUNTIME_CONTEXT_BEGIN/_END).
CONTEXT_BEGIN = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"
CONTEXT_END = "<<<END_OPENCLAW_INTERNAL_CONTEXT>>>"


class Identity(msgspec.Struct, frozen=True):
    owner: str  # who asks: derived from the API key; conversations of different owners never meet
    name: str | None  # the client's own id for the conversation, if it gave one


def owner_of(bearer: str | None) -> str:
    """The owner of a request: a digest of its API key (the key itself is never stored)."""
    if not bearer:
        return "local"
    return "key:" + hashlib.sha256(bearer.encode()).hexdigest()[:16]


def identify(request: TurnRequest, headers: Mapping[str, str], owner: str) -> Identity:
    candidates = (
        headers.get("X-Session-Id"),
        request.conversation_id,
        request.prompt_cache_key,
        request.user,
    )
    name = next((c.strip() for c in candidates if c and c.strip()), None)
    return Identity(owner=owner, name=name[:200] if name else None)


def _content(content: Content | None) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [("text", content)] if content else []
    parts: list[Part] = []
    for part in content:
        if isinstance(part, ImagePart):
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            parts.append(("image", hashlib.sha256(url.encode()).hexdigest()))
        elif isinstance(part, DocumentPart):
            parts.append(("document", hashlib.sha256(part.data.encode()).hexdigest()))
        elif part.text:
            parts.append(("text", part.text))
    return parts


def canonical(message: Message) -> bytes:
    if isinstance(message, SystemMessage | DeveloperMessage):
        return _encoder.encode(("system", _content(message.content)))
    if isinstance(message, UserMessage):
        return _encoder.encode(("user", _content(message.content)))
    if isinstance(message, ToolMessage):
        return _encoder.encode(("tool", message.tool_call_id, _content(message.content)))
    assert isinstance(message, AssistantMessage)
    calls = [(c.id, c.function.name, _arguments(c.function.arguments)) for c in message.tool_calls or []]
    return _encoder.encode(("assistant", _content(message.content), calls))


def _arguments(raw: str) -> str:
    """Tool call arguments as JSON with sorted keys: clients that parse and re-serialise them (LangChain) send the
    same call back with other spacing or key order."""
    try:
        return _sorted.encode(msgspec.json.decode(raw)).decode()
    except msgspec.DecodeError:
        return raw


def chain(canonicals: Sequence[bytes], start: bytes = b"") -> bytes:
    digest = start
    for item in canonicals:
        digest = hashlib.sha256(digest + item).digest()
    return digest


def internal_context(message: Message) -> bool:
    """OpenClaw's internal-context message: a user message that is one delimited context block and nothing else (a
    user's own text with the block quoted in it is not one)."""
    if not isinstance(message, UserMessage):
        return False
    parts = _content(message.content)
    if not parts or any(kind != "text" for kind, _ in parts):
        return False
    text = "".join(value for _, value in parts).strip()
    return text.startswith(CONTEXT_BEGIN) and text.endswith(CONTEXT_END)


class Split(msgspec.Struct, frozen=True):
    """A request seen as a conversation: its known part (up to the last assistant message) and its new part."""

    known: int  # messages[:known] are the history a continuation must already hold
    head: bytes  # the hash of that history ("" hash when there is none)
    canonicals: list[bytes]  # the messages that make up the history (internal context left out)
    system: bytes  # the hash of the system and developer messages
    answers: frozenset[str]  # the call ids the tool messages that start the new part answer


def split(messages: Sequence[Message]) -> Split:
    canonicals = [b"" if internal_context(m) else canonical(m) for m in messages]
    known = max((i + 1 for i, m in enumerate(messages) if isinstance(m, AssistantMessage)), default=0)
    answers: list[str] = []
    for message in messages[known:]:
        if not isinstance(message, ToolMessage):
            break
        answers.append(message.tool_call_id)
    system = chain(
        [c for c, m in zip(canonicals, messages, strict=True) if isinstance(m, SystemMessage | DeveloperMessage)]
    )
    return Split(
        known=known,
        head=chain([c for c in canonicals[:known] if c]),
        canonicals=[c for c in canonicals if c],
        system=system,
        answers=frozenset(answers),
    )
