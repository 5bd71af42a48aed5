"""The turn core: one turn, whatever protocol asked for it. `Core.turn(request, caller)` gives a `Turn`; iterating
`Turn.events()` checks the key's models, admits the request (quotas, their headers, the breaker), finds its conversation
(one turn at a time; continue, resume, or replay when a resume fails), leases a worker, runs the turn under the watchdog
(stopping it at the output limit), and accounts for it (one `TurnSettled` on the bus for the usage ledger, metrics
and the breaker; the CLI's login state; timeout alerts). It yields neutral events — `TextDelta`, `ToolCallEvent`,
`Keepalive` (silence, only when streaming) — and ends with an `Outcome`. A structured turn (`output_schema`) holds
its answer's text back until it is checked JSON for the schema, asking the model again on the same lease when it is
not (`Turn._answer`, `turns.structured`). An error before the first event (or any error of a non-streaming turn) is
raised, so the wire answers with its real HTTP status; a streaming turn that fails after its first event ends with an
`Outcome` whose `error` is set, which the wire renders inside its stream. The conversation is recorded only after the
consumer took the `Outcome` and asked for more: iterate to the end (`contextlib.aclosing`); a consumer that stops early
(its client went away) leaves the turn unrecorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field

import structlog

from maxproxy import errors, prompt, reply
from maxproxy.breaker import Breaker
from maxproxy.bus import Alert, Bus, CliTurn, TurnSettled
from maxproxy.claude.events import Result, System, ToolCall
from maxproxy.claude.probe import CliStatus
from maxproxy.claude.watchdog import Watchdog
from maxproxy.conversation import identify, split
from maxproxy.keys import Key
from maxproxy.pool import Lease, Pool, ResumeFailed
from maxproxy.quota import Quotas
from maxproxy.sessions import Plan, Sessions
from maxproxy.settings import Model, Settings
from maxproxy.state import Access
from maxproxy.turns import structured
from maxproxy.turns.messages import AssistantMessage, FinishReason, PromptTokensDetails, TurnRequest, Usage

log = structlog.get_logger("maxproxy.turns")


# --- neutral events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Answer text the client may see now."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """The model's thinking as it comes (only when thinking ran): chat's `reasoning_content`, a Responses summary."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningSignature:
    """The signature that ends a thinking block (as the upstream gives it): Anthropic's `signature_delta`."""

    signature: str


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """A complete client tool call: `index` counts the answer's calls from 0; `id` is the id maxproxy issued."""

    index: int
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The model has been silent for `keepalive_interval`: the wire may open its stream and send a keepalive."""


@dataclass(frozen=True)
class Outcome:
    """How the answer ended. With `error`, a streaming turn failed after its first event (nothing else is valid)."""

    finish_reason: FinishReason
    text: str  # the whole answer's text (abandoned retries left out)
    calls: list[ToolCallEvent]  # the calls handed to the client (finish reason `tool_calls`)
    usage: Usage
    error: errors.ProxyError | None = None
    reasoning: str = ""  # the model's thinking over the whole turn ("" when none ran)
    thoughts: tuple[tuple[str, str], ...] = ()  # the same thinking as (thinking, signature) blocks, in order


Event = TextDelta | ReasoningDelta | ReasoningSignature | ToolCallEvent | Keepalive | Outcome
Answered = TextDelta | ReasoningDelta | ReasoningSignature | ToolCallEvent | Keepalive


def outcome(assembler: reply.Assembler, error: errors.ProxyError | None = None) -> Outcome:
    calls = [ToolCallEvent(i, c.id, c.name, c.arguments) for i, c in enumerate(assembler.calls)]
    return Outcome(
        assembler.finish_reason,
        assembler.text,
        calls,
        assembler.usage(),
        error,
        assembler.thinking,
        tuple(assembler.thoughts),
    )


@dataclass
class Attempts:
    """The CLI turns one answer took: one, or more when a structured answer was asked for again (`current` is the
    last). Usage and cost add up over all of them; the answer is the last one's, with its checked JSON as the text."""

    current: reply.Assembler
    earlier: list[reply.Assembler] = field(default_factory=list)
    earlier_cost: float = 0.0  # what the earlier CLI turns cost (the worker reports the last one's)
    checked: str | None = None  # a structured answer's JSON text, once it validated

    @property
    def all(self) -> list[reply.Assembler]:
        return [*self.earlier, self.current]

    def again(self, assembler: reply.Assembler, cost: float) -> None:
        self.earlier.append(self.current)
        self.earlier_cost += cost
        self.current = assembler

    def usage(self) -> Usage:
        used = [a.usage() for a in self.all]
        if len(used) == 1:
            return used[0]
        prompt_tokens, completion = sum(u.prompt_tokens for u in used), sum(u.completion_tokens for u in used)
        cached = sum(u.prompt_tokens_details.cached_tokens for u in used)
        created = sum(u.prompt_tokens_details.cache_creation_tokens for u in used)
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached, cache_creation_tokens=created),
        )

    def outcome(self, error: errors.ProxyError | None = None) -> Outcome:
        last = self.current
        calls = [ToolCallEvent(i, c.id, c.name, c.arguments) for i, c in enumerate(last.calls)]
        text = self.checked if self.checked is not None else last.text
        thinking = reply.MESSAGE_SEPARATOR.join(a.thinking for a in self.all if a.thinking)
        thoughts = tuple(thought for a in self.all for thought in a.thoughts)
        return Outcome(last.finish_reason, text, calls, self.usage(), error, thinking, thoughts)

    def message(self) -> AssistantMessage:
        """The answer as the conversation records it (a structured one: the JSON the client got)."""
        answer = self.current.message()
        if self.checked is not None:
            answer.content = self.checked
        return answer


# --- the core ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who asks: the API key, the owner its conversations belong to, the request headers (`X-Session-Id`), and the
    request's access record (the core fills in session, continued, ttft_ms, tool_calls, tokens and error)."""

    key: Key
    owner: str
    headers: Mapping[str, str]
    access: Access = field(default_factory=Access)


@dataclass(frozen=True)
class Core:
    settings: Settings
    pool: Pool
    sessions: Sessions
    quotas: Quotas
    breaker: Breaker
    cli: CliStatus
    bus: Bus
    models: Mapping[str, Model]  # the served model table (`catalog.Catalog`)

    def turn(self, request: TurnRequest, caller: Caller) -> Turn:
        return Turn(self, request, caller)


class Turn:
    """One turn being answered. `headers` (x-session-id, x-ratelimit-*) is set before the first event."""

    def __init__(self, core: Core, request: TurnRequest, caller: Caller) -> None:
        self.core = core
        self.request = request
        self.caller = caller
        self.headers: dict[str, str] = {}
        self._began = False  # an event went to the consumer

    async def events(self) -> AsyncGenerator[Event, None]:
        core, request, caller = self.core, self.request, self.caller
        access = caller.access
        access.model, access.stream = request.model, request.stream
        core.quotas.check_model(caller.key, request.model)
        # every check on the request, before a conversation is touched
        full = prompt.build(request, core.settings, core.models)
        core.breaker.check(full.family)
        with core.quotas.admit(caller.key) as limits:
            identity = identify(request, caller.headers, caller.owner)
            parts = split(request.messages)
            async with core.sessions.exclusive(identity, parts):
                plan = await core.sessions.plan(identity, request, parts, full)
                access.session = plan.record.public_id
                access.continued = plan.continuing
                try:
                    async for event in self._run(plan, limits):
                        yield event
                except ResumeFailed as exc:
                    if self._began:
                        raise
                    log.warning("session_resume_failed", session=plan.resume, error=exc.message)
                    plan = await core.sessions.plan(identity, request, parts, full, replay=True)
                    access.continued = False
                    async for event in self._run(plan, limits):
                        yield event

    async def _run(self, plan: Plan, limits: dict[str, str]) -> AsyncGenerator[Event, None]:
        core, request, access = self.core, self.request, self.caller.access
        settings = core.settings
        self.headers = {"x-session-id": plan.record.public_id, **limits}
        turn = plan.turn
        attempts = Attempts(
            reply.Assembler(streaming=request.stream, continuation=turn.results is not None, cli_path=core.cli.path)
        )
        started = time.monotonic()
        conversation_id = plan.record.id if plan.continuing else None
        async with core.pool.acquire(
            turn.launch,
            turn.family,
            model=request.model,
            conversation=conversation_id,
            resume=plan.resume,
            key=self.caller.key.name,
            options=turn.options,
        ) as lease:
            await core.sessions.claim(plan, lease)
            watchdog = Watchdog(settings.inactivity_timeout, settings.max_turn_seconds)
            ended = False
            try:
                failure: errors.ProxyError | None = None
                try:
                    async for event in self._answer(lease, turn, watchdog, attempts, started):
                        self._began = True
                        yield event
                except errors.ProxyError as exc:
                    failure = exc
                failure = failure or attempts.current.failure()
                if failure is not None:
                    if isinstance(failure, errors.Timeout):
                        self._alert_timeout(failure.message)
                    if not (request.stream and self._began):
                        raise failure
                    access.error = failure.code
                    log.warning("stream_failed", code=failure.code, message=failure.message)
                    yield attempts.outcome(failure)
                    return
                if attempts.current.suspended:
                    access.tool_calls = len(attempts.current.calls)
                usage = attempts.usage()
                access.prompt_tokens, access.completion_tokens = usage.prompt_tokens, usage.completion_tokens
                yield attempts.outcome()
                ended = self._ended_normally(lease, attempts.current)
            finally:
                answer = attempts.message() if ended else None
                self._account(attempts, turn.family, lease)  # first: a cancelled request is still accounted for
                await core.sessions.settle(plan, lease, answer)

    async def _answer(
        self, lease: Lease, turn: prompt.Turn, watchdog: Watchdog, attempts: Attempts, started: float
    ) -> AsyncGenerator[Answered, None]:
        """The answer's events. A structured answer's text (`output_schema`) is held back until the turn ends and
        checked; while it is not JSON for the schema, the model is told what is wrong, on the same worker, and
        answers again (`structured_output_retries` times at most, then `InvalidStructuredOutput`). Thinking and tool
        calls go out as they come (text before a call with it: the check is for the final answer); a keepalive goes
        out when the held text has kept the client waiting a keepalive interval. An answer cut at the output limit
        is not asked for again: it goes out as it is, with finish reason `length`, as OpenAI's does."""
        output = self.request.output_schema
        if output is None:
            async for event in self._drive(lease, turn, watchdog, attempts.current, started):
                yield event
            return
        settings = self.core.settings
        tick = settings.keepalive_interval if self.request.stream else None
        lines, results = turn.lines, turn.results
        for attempt in range(settings.structured_output_retries + 1):
            assembler = attempts.current
            held: list[str] = []
            shown = time.monotonic()  # when the client last got something
            async for event in self._drive(lease, turn, watchdog, assembler, started, lines=lines, results=results):
                if isinstance(event, TextDelta):
                    held.append(event.text)
                    if tick is None or time.monotonic() - shown < tick:
                        continue
                    event = Keepalive()
                elif isinstance(event, ToolCallEvent) and held:
                    yield TextDelta("".join(held))
                    held = []
                shown = time.monotonic()
                yield event
            if assembler.failure() is not None:
                return  # the error is the answer; the held text is not
            if assembler.suspended or assembler.finish_reason == "length" or lease.in_turn:
                if held:
                    self._first_token(started)
                    yield TextDelta("".join(held))
                return
            verdict = structured.check(output, assembler.text)
            if verdict.problem is None:
                attempts.checked = verdict.text
                self._first_token(started)
                yield TextDelta(verdict.text)
                return
            log.info("structured_output_invalid", attempt=attempt + 1, problem=verdict.problem[:200])
            if attempt == settings.structured_output_retries:
                tries = f"{attempt + 1} attempts" if attempt else "1 attempt"
                raise errors.InvalidStructuredOutput(
                    f"The model's answer did not match the response format after {tries}: {verdict.problem}"
                )
            cost = lease.turn_cost if assembler.result is not None else 0.0
            attempts.again(reply.Assembler(streaming=self.request.stream, cli_path=self.core.cli.path), cost)
            line = prompt.user_line([{"type": "text", "text": structured.correction(output, verdict.problem)}])
            lines, results = [line], None

    async def _drive(
        self,
        lease: Lease,
        turn: prompt.Turn,
        watchdog: Watchdog,
        assembler: reply.Assembler,
        started: float,
        *,
        lines: list[prompt.Line] | None = None,
        results: dict[str, str] | None = None,
    ) -> AsyncGenerator[Answered, None]:
        """The turn's events as neutral ones, until it ends, fails, or waits for the client's tool results. `lines`
        (and `results`) in place of the turn's own: a structured answer asked for again."""
        core, request = self.core, self.request
        await lease.apply(turn.options, turn.toolset)
        tick = core.settings.keepalive_interval if request.stream else None
        interrupted = False
        if lines is None:
            lines, results = turn.lines, turn.results
        events = lease.turn(lines, watchdog, tick=tick, results=results)
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None:  # silence (only asked for when streaming)
                    yield Keepalive()
                    continue
                text = assembler.feed(event)
                if isinstance(event, System) and event.subtype == "init" and event.apiKeySource is not None:
                    core.cli.api_key_source = event.apiKeySource
                if assembler.thinking_delta:
                    self._first_token(started)
                    yield ReasoningDelta(assembler.thinking_delta)
                if assembler.signature_delta:
                    yield ReasoningSignature(assembler.signature_delta)
                if text:
                    if request.output_schema is None:  # a structured answer's text goes out once checked
                        self._first_token(started)
                    yield TextDelta(text)
                elif isinstance(event, ToolCall) and event.refusal is None:
                    self._first_token(started)
                    yield ToolCallEvent(len(assembler.calls) - 1, event.id, event.name, event.arguments)
                # The CLI would "continue" past the output limit on its own; the client asked for this many tokens.
                if assembler.stop_requested and not interrupted:
                    interrupted = True
                    await lease.interrupt()
                if assembler.error is not None or assembler.suspended:
                    break

    def _first_token(self, started: float) -> None:
        access = self.caller.access
        if self.request.stream and access.ttft_ms is None:  # time to first token is a streaming measure
            access.ttft_ms = round((time.monotonic() - started) * 1000, 1)

    def _ended_normally(self, lease: Lease, assembler: reply.Assembler) -> bool:
        """The turn is one the conversation can continue from: answered in full (or stopped at tool calls the client
        now has), with no error, nothing cut."""
        if assembler.failure() is not None or self.caller.access.disconnected or lease.interrupted:
            return False
        if assembler.suspended:
            return lease.waiting
        return assembler.finish_reason == "stop" and not lease.in_turn

    def _alert_timeout(self, message: str) -> None:
        self.core.bus.announce(Alert("timeout", f"{self.caller.key.name} · {self.request.model}: {message}"))

    def _account(self, attempts: Attempts, family: str, lease: Lease) -> None:
        """Tell the bus what the answer used (every attempt) and how each CLI turn ended: its listeners (the ledger,
        metrics, the breaker) run in this step, so the usage is counted and the breaker set before the response ends."""
        core = self.core
        _note_login(core.cli, attempts.current.result)
        usage = attempts.usage()
        cost = attempts.earlier_cost + (lease.turn_cost if attempts.current.result is not None else 0.0)
        cached = usage.prompt_tokens_details.cached_tokens
        settled = TurnSettled(
            key=self.caller.key.name,
            model=self.request.model,
            family=family,
            input_tokens=usage.prompt_tokens - cached,
            cached_tokens=cached,
            cache_creation_tokens=usage.prompt_tokens_details.cache_creation_tokens,
            output_tokens=usage.completion_tokens,
            cost_usd=cost,
            cli_turns=tuple(CliTurn(a.rate_limit, a.result) for a in attempts.all),
        )
        core.bus.note(settled)


def _note_login(cli: CliStatus, result: Result | None) -> None:
    """A "Not logged in" answer makes the CLI unready (`/health` 503) until a later turn is answered: the CLI reads
    a login made meanwhile without a restart (measured)."""
    if result is None:
        return
    if reply.not_logged_in(result):
        if cli.logged_in is not False:
            log.warning("cli_not_logged_in", path=cli.path)
        cli.logged_in = False
    elif not result.is_error and cli.logged_in is False:
        log.info("cli_logged_in", path=cli.path)
        cli.logged_in = True
