"""The reply: the events of one CLI turn turned into the answer, in neutral terms (pure, no I/O).

`Assembler` is fed every event of a turn and says which text may go to the client now; it tracks the finish reason,
the usage and, when the turn failed, the `ProxyError` to answer with. When the upstream stream broke and the CLI
retried (`abandoned_blocks`, protocol note §2.4), text already sent is not sent twice: the retried answer is matched
against it and only what goes beyond it is released; if the retry says something else, a streaming client gets an
error instead of a spliced answer (a non-streaming one gets the clean retried text). Thinking is matched the same
way, but a retry that thinks differently only goes on after a separator. The wire protocols
(`maxproxy.wire`) write it in their own shape.

Tool calls: the answer stops (`suspended`, finish reason `tool_calls`) once the model's message has ended at
`tool_use` and each of its calls is settled: handed to the client (a `ToolCall` maxproxy accepted), or answered
inside the CLI (a call maxproxy refused, a tool the CLI does not know, a built-in tool it ran).
"""

from __future__ import annotations

import re
import time

from maxproxy import breaker, errors
from maxproxy.claude.events import (
    Assistant,
    Block,
    RateLimit,
    RateLimitInfo,
    Result,
    StreamEvent,
    System,
    ToolCall,
    TurnEvent,
    User,
)
from maxproxy.claude.events import Usage as CliUsage
from maxproxy.turns.messages import AssistantMessage, FinishReason, FunctionCall, PromptTokensDetails, Usage
from maxproxy.turns.messages import ToolCall as WireToolCall

MESSAGE_SEPARATOR = "\n\n"  # between the texts of consecutive model calls in one turn (e.g. around a tool run)


class Assembler:
    def __init__(self, *, streaming: bool = True, continuation: bool = False, cli_path: str = "claude") -> None:
        self.streaming = streaming
        self.cli_path = cli_path  # named in the answer when the CLI turns out not to be logged in
        # Going on with a turn that waited for tool results: the CLI's result counts the whole turn, so this
        # answer's usage comes from its own model calls.
        self.continuation = continuation
        self.calls: list[ToolCall] = []  # tool calls handed to the client, in the order the CLI made them
        self._tool_uses: dict[str, list[str]] = {}  # api message id → its tool_use ids
        self._settled: set[str] = set()  # tool_use ids accepted, refused or answered inside the CLI
        self._tool_stop: str | None = None  # the message that ended at tool_use
        self.result: Result | None = None
        self.rate_limit: RateLimitInfo | None = None
        self.init: System | None = None
        self._finish_reason: FinishReason = "stop"
        self.stop_requested = False  # the output limit was hit: the caller interrupts the CLI's auto-continuation
        self.error: errors.ProxyError | None = None
        self.sent_text = False
        self._messages: dict[str, dict[int, str]] = {}  # api message id → block index → text (the clean answer)
        self._current: str | None = None
        self._emitted: dict[str, dict[int, str]] = {}  # what went to the client, per message and block
        self._retrying = False
        self._replay = ""  # text the retried message must repeat before anything new is released
        self._stream_usage: dict[str, tuple[CliUsage | None, int]] = {}
        self._thinking: dict[str, dict[int, str]] = {}  # api message id → block index → the model's thinking
        self.thinking_delta = ""  # thinking the last fed event added (the client sees it as reasoning)
        self.signature_delta = ""  # the signature the last fed event gave the thinking block it ends
        self._signatures: dict[str, dict[int, str]] = {}  # api message id → block index → its thinking's signature
        self._thought: dict[str, dict[int, str]] = {}  # the thinking the client was shown, per message and block
        self._thought_shown = False
        self._thought_replay = ""  # shown thinking a retry must repeat before more is shown
        self._thought_retrying = False

    # --- feeding -------------------------------------------------------------------------------------------------

    def feed(self, event: TurnEvent) -> str:
        """Take one event; return the text the client may see now ("" for none). Thinking it added, if any, is in
        `thinking_delta` until the next event."""
        self.thinking_delta = self.signature_delta = ""
        if isinstance(event, StreamEvent):
            if event.parent_tool_use_id is None:  # a subagent's own stream is not the answer
                return self._stream(event)
        elif isinstance(event, Assistant):
            if event.parent_tool_use_id is None and event.error is None and event.message.model != "<synthetic>":
                self._note_tool_uses(event.message.id, event.message.content, event.message.stop_reason)
                return self._whole(event)
        elif isinstance(event, ToolCall):
            self._settled.add(event.tool_use_id)
            if event.refusal is None:
                self.calls.append(event)
        elif isinstance(event, User):
            if event.parent_tool_use_id is None and not isinstance(event.message.content, str):
                answered = (b.tool_use_id for b in event.message.content if b.type == "tool_result" and b.tool_use_id)
                self._settled.update(answered)
        elif isinstance(event, Result):
            self.result = event
        elif isinstance(event, RateLimit):
            self.rate_limit = event.rate_limit_info
        elif isinstance(event, System) and event.subtype == "init":
            self.init = event
        return ""

    def _stream(self, line: StreamEvent) -> str:
        event = line.event
        message_id = line.api_message_id or ""
        kind = event.type
        if kind == "content_block_start" and event.content_block is not None:
            self._note_tool_uses(message_id, [event.content_block], None)
        elif kind == "message_start":
            self._current = message_id
            self._tool_stop = None  # a new model call: the answer stops at the end of this one, not an earlier one
            self._messages.setdefault(message_id, {})
            usage = event.message.usage if event.message is not None else None
            self._stream_usage[message_id] = (usage, 0)
        elif kind == "content_block_delta" and event.delta is not None and event.delta.type == "text_delta":
            return self._text(message_id, event.index or 0, event.delta.text or "")
        elif kind == "content_block_delta" and event.delta is not None and event.delta.type == "thinking_delta":
            self.thinking_delta = self._think(message_id, event.index or 0, event.delta.thinking or "")
        elif kind == "content_block_delta" and event.delta is not None and event.delta.type == "signature_delta":
            self.signature_delta = event.delta.signature or ""
            self._signatures.setdefault(message_id, {})[event.index or 0] = self.signature_delta
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason == "max_tokens" and not self.stop_requested:
                self._finish_reason = "length"
                self.stop_requested = True
            if event.delta is not None and event.delta.stop_reason == "tool_use":
                self._tool_stop = message_id
            if event.usage is not None and message_id in self._stream_usage:
                start, _ = self._stream_usage[message_id]
                self._stream_usage[message_id] = (start, event.usage.output_tokens or 0)
        elif kind == "message_stop" and line.abandoned_blocks is not None:
            self._abandon(line.abandoned_blocks.api_message_id, line.abandoned_blocks.from_block_index)
        return ""

    def _note_tool_uses(self, message_id: str, blocks: list[Block] | str, stop_reason: str | None) -> None:
        if isinstance(blocks, str):
            return
        known = self._tool_uses.setdefault(message_id, [])
        known.extend(b.id for b in blocks if b.type == "tool_use" and b.id and b.id not in known)
        if stop_reason == "tool_use":  # a message that never streamed (the CLI's non-streaming fallback)
            self._tool_stop = message_id

    @property
    def finish_reason(self) -> FinishReason:
        return "tool_calls" if self.suspended else self._finish_reason

    @property
    def suspended(self) -> bool:
        """The turn now waits for the client's tool results: this answer is complete."""
        if not self.calls or self._tool_stop is None or self.stop_requested:
            return False
        return all(tool_use in self._settled for tool_use in self._tool_uses.get(self._tool_stop, []))

    def message(self) -> AssistantMessage:
        """The answer as the client will send it back in its next request's history."""
        calls = [WireToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in self.calls]
        return AssistantMessage(content=self.text or None, tool_calls=calls or None)

    def _whole(self, event: Assistant) -> str:
        """A finished block. Streamed blocks were already taken delta by delta; a message that never streamed (the
        CLI's non-streaming fallback after a stalled or broken stream) arrives only this way."""
        message = event.message
        if self._messages.get(message.id) or isinstance(message.content, str):
            return ""
        blocks = [b.text for b in message.content if b.type == "text" and b.text]
        return "".join(self._text(message.id, i, text) for i, text in enumerate(blocks))

    def _text(self, message_id: str, index: int, text: str) -> str:
        if self.stop_requested or not text:
            return ""
        blocks = self._messages.setdefault(message_id, {})
        blocks[index] = blocks.get(index, "") + text
        if self.error is not None:
            return ""
        if self._replay:
            if self._replay.startswith(text):
                self._replay = self._replay[len(text) :]
                return ""
            if not text.startswith(self._replay):
                if not self.streaming:  # nothing was shown yet: the clean retried text is the answer
                    self._replay = ""
                    return text
                self.error = errors.UpstreamError(
                    "The upstream stream broke after part of the answer was sent, and the retried answer differs; "
                    "retry the request",
                    code="upstream_stream_broken",
                )
                return ""
            text, self._replay = text[len(self._replay) :], ""
        prefix = ""
        emitted = self._emitted.setdefault(message_id, {})
        if not emitted and self.sent_text and not self._retrying:
            prefix = MESSAGE_SEPARATOR
        self._retrying = False
        emitted[index] = emitted.get(index, "") + text
        self.sent_text = True
        return prefix + text

    def _think(self, message_id: str, index: int, text: str) -> str:
        """Thinking the client may see now. After a retry, thinking it was already shown is not shown again; a
        retry that thinks differently goes on after a separator (thinking is not the answer: no error for it)."""
        if not text:
            return ""
        blocks = self._thinking.setdefault(message_id, {})
        blocks[index] = blocks.get(index, "") + text
        if self._thought_replay:
            if self._thought_replay.startswith(text):
                self._thought_replay = self._thought_replay[len(text) :]
                return ""
            if text.startswith(self._thought_replay):
                text, self._thought_replay = text[len(self._thought_replay) :], ""
            else:
                self._thought_replay, self._thought_retrying = "", False
        emitted = self._thought.setdefault(message_id, {})
        prefix = MESSAGE_SEPARATOR if not emitted and self._thought_shown and not self._thought_retrying else ""
        self._thought_retrying = False
        emitted[index] = emitted.get(index, "") + text
        self._thought_shown = True
        return prefix + text

    def _abandon(self, message_id: str, from_index: int) -> None:
        thought = self._thought.get(message_id, {})
        self._thought_replay = "".join(thought[i] for i in sorted(thought) if i >= from_index) + self._thought_replay
        self._thought_retrying = bool(self._thought_replay) or self._thought_retrying
        for store in (self._thinking.get(message_id, {}), thought, self._signatures.get(message_id, {})):
            for i in [i for i in store if i >= from_index]:
                del store[i]
        blocks = self._messages.get(message_id, {})
        emitted = self._emitted.get(message_id, {})
        self._replay = "".join(emitted[i] for i in sorted(emitted) if i >= from_index) + self._replay
        for i in [i for i in blocks if i >= from_index]:
            del blocks[i]
        for i in [i for i in emitted if i >= from_index]:
            del emitted[i]
        self._stream_usage.pop(message_id, None)
        # The retry streams a new message; it continues what was sent, so no separator goes in front of it.
        self._retrying = bool(self._replay) or self._retrying

    # --- results -------------------------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The clean answer: every model call's text, abandoned blocks left out."""
        texts = ("".join(blocks[i] for i in sorted(blocks)) for blocks in self._messages.values())
        return MESSAGE_SEPARATOR.join(t for t in texts if t)

    @property
    def thinking(self) -> str:
        """The model's thinking over the whole turn (what a client shows as reasoning)."""
        texts = ("".join(blocks[i] for i in sorted(blocks)) for blocks in self._thinking.values())
        return MESSAGE_SEPARATOR.join(t for t in texts if t)

    @property
    def thoughts(self) -> list[tuple[str, str]]:
        """The turn's thinking blocks as (thinking, signature), in order (the signature "" where none came)."""
        return [
            (blocks[i], self._signatures.get(message_id, {}).get(i, ""))
            for message_id, blocks in self._thinking.items()
            for i in sorted(blocks)
            if blocks[i]
        ]

    def failure(self) -> errors.ProxyError | None:
        """The error this turn must be answered with, if any (never its text as assistant content)."""
        if self.error is not None:
            return self.error
        if self.suspended:
            return None
        if self.result is None:
            return errors.CLIFailed("The CLI ended the turn without a result")
        if self.stop_requested:
            return None  # the turn was interrupted on purpose at the output limit
        if self.result.is_error:
            return error_for(self.result, self.rate_limit, cli_path=self.cli_path)
        return None

    def usage(self) -> Usage:
        cli = self.result.usage if self.result is not None and self.result.usage is not None else None
        if cli is not None and (cli.input_tokens or cli.output_tokens) and not self.continuation:
            prompt = (
                (cli.input_tokens or 0) + (cli.cache_read_input_tokens or 0) + (cli.cache_creation_input_tokens or 0)
            )
            cached, completion = cli.cache_read_input_tokens or 0, cli.output_tokens or 0
            created = cli.cache_creation_input_tokens or 0
        else:  # interrupted turns may report no usage; count what the stream showed
            prompt = cached = created = completion = 0
            for start, output in self._stream_usage.values():
                if start is not None:
                    cached += start.cache_read_input_tokens or 0
                    created += start.cache_creation_input_tokens or 0
                    prompt += (
                        (start.input_tokens or 0)
                        + (start.cache_read_input_tokens or 0)
                        + (start.cache_creation_input_tokens or 0)
                    )
                completion += output
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached, cache_creation_tokens=created),
        )


_EXTRA_USAGE = re.compile(r"third-party apps|extra usage", re.IGNORECASE)
_TIMEOUT = re.compile(r"timed out|stream idle|no bytes for", re.IGNORECASE)
DEFAULT_RETRY_AFTER = 30.0  # the plan's limit, when the CLI gives no reset time
# A passing 429/529/5xx: the CLI does not pass the upstream's own Retry-After on (its result has only the status,
# measured with `retry-after: 2`), so the client gets a short estimate instead.
TRANSIENT_RETRY_AFTER = 5.0


def not_logged_in(result: Result) -> bool:
    """The CLI found no credentials: it answers locally, without a request (`Not logged in · Please run /login`)."""
    return result.is_error and (result.result or "").startswith("Not logged in")


def error_for(
    result: Result, rate_limit: RateLimitInfo | None = None, *, cli_path: str = "claude"
) -> errors.ProxyError:
    """Map a CLI error result to the status an OpenAI SDK understands (protocol note §4, §12.6)."""
    status = result.api_error_status
    text = (result.result or "; ".join(result.errors or []) or result.subtype or "unknown error").strip()
    if result.subtype not in ("success", ""):
        return errors.CLIFailed(f"The CLI ended the turn with {result.subtype}: {text}")
    if status is None and not_logged_in(result):
        return errors.CLINotLoggedIn.of(cli_path)
    if status == 429:
        if not (breaker.plan_limit_result(result) or breaker.plan_limit_event(rate_limit)):
            return errors.RateLimited(f"Upstream rate limit: {text}", retry_after=TRANSIENT_RETRY_AFTER)
        retry_after = DEFAULT_RETRY_AFTER
        if rate_limit is not None and rate_limit.resetsAt:
            retry_after = max(1.0, rate_limit.resetsAt - time.time())
        return errors.RateLimited(
            f"The subscription's usage limit is reached: {text}", retry_after=retry_after, code="subscription_limit"
        )
    if status in (401, 403):
        return errors.UpstreamAuthError(
            f"The Claude Code CLI could not authenticate upstream ({status}: {text}): {errors.login_fix(cli_path)}"
        )
    if status == 529 or "overloaded" in text.lower():
        return errors.Overloaded(f"Upstream overloaded: {text}", retry_after=TRANSIENT_RETRY_AFTER)
    if status == 400 and _EXTRA_USAGE.search(text):
        return errors.ExtraUsageRequired(f"Upstream refused the request: {text}")
    if status == 400 and (result.terminal_reason == "prompt_too_long" or text.startswith("Prompt is too long")):
        return errors.ContextLengthExceeded(text)
    if status == 400 or result.terminal_reason == "image_error":
        return errors.InvalidRequest(f"Upstream rejected the request: {text}")
    if status is None and _TIMEOUT.search(text):
        return errors.Timeout(f"Upstream timed out: {text}", code="upstream_timeout")
    transient = status is not None and status >= 500
    return errors.UpstreamError(f"Upstream error: {text}", retry_after=TRANSIENT_RETRY_AFTER if transient else None)
