"""The HTTP handlers: `GET /health`, `GET /v1/models[/{id}]`, `POST /v1/chat/completions` (JSON or SSE),
`GET/DELETE /v1/sessions`, `GET /v1/usage` and `GET /metrics`.

A chat request is decoded and checked (`schema`), turned into a CLI turn (`prompt`), admitted (the key's model list
and quotas, the subscription breaker), run on a worker from the pool, and its events are turned into the answer
(`reply`); its usage is recorded and the breaker reads its rate-limit state. Streams hold their response headers
until the first token or the first keepalive tick, so an error that comes early still gets its real HTTP status;
after that an error becomes a final `data: {"error": ...}` event before `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import msgspec
import structlog
from aiohttp import web

from maxproxy import __version__, errors, prompt, reply
from maxproxy.api.schema import MAX_DEPTH, ChatRequest, ModelCard, ModelList, ignored_fields, request_decoder
from maxproxy.api.sse import Stream
from maxproxy.bus import Alert
from maxproxy.claude.events import Result, System, ToolCall, TurnEvent
from maxproxy.claude.probe import CliStatus
from maxproxy.claude.worker import Watchdog
from maxproxy.conversation import identify, split
from maxproxy.metrics import CONTENT_TYPE
from maxproxy.pool import Lease, ResumeFailed
from maxproxy.sessions import Plan
from maxproxy.state import (
    ACCESS,
    BREAKER,
    BUS,
    CLI,
    KEY,
    KEYS,
    LEDGER,
    METRICS,
    OWNER,
    POOL,
    QUOTAS,
    SESSIONS,
    SETTINGS,
)
from maxproxy.usage import today

log = structlog.get_logger("maxproxy.api")
routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    cli = request.app[CLI]
    pool = request.app[POOL]
    problems = []
    if (problem := cli.problem()) is not None:
        problems.append(problem)
    if pool.backoff_seconds:
        problems.append(
            f"CLI workers keep failing to start ({pool.last_error}); retrying in {pool.backoff_seconds:.0f}s"
        )
    if pool.draining:
        problems.append("shutting down")
    ready = not problems
    body = {
        "status": "ok" if ready else "unavailable",
        "problems": problems,
        "version": __version__,
        "ready": ready,
        "cli": {
            "path": cli.path,
            "found": cli.found,
            "version": cli.version,
            "pinned_version": cli.pinned_version,
            "api_key_source": cli.api_key_source,
            "token_source": cli.token_source,
            "subscription_type": cli.subscription_type,
            "billing": cli.billing,
            "error": cli.error,
        },
        "workers": {"busy": pool.busy, "idle": pool.idle, "starting": pool.starting, "queued": pool.queued},
        "breaker": [
            {"scope": trip.scope, "until": int(trip.until), "reason": trip.reason}
            for trip in request.app[BREAKER].state()
        ],
    }
    headers = {} if ready else {"Retry-After": str(max(1, round(pool.backoff_seconds or 5)))}
    return web.json_response(body, status=200 if ready else 503, headers=headers)


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    table = request.app[SETTINGS].model_table
    cards = ModelList(data=[ModelCard(id=name, created=model.created) for name, model in table.items()])
    return web.Response(body=msgspec.json.encode(cards), content_type="application/json")


@routes.get("/v1/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    model = request.app[SETTINGS].model_table.get(name)
    if model is None:
        raise errors.ModelNotFound(f"The model {name!r} does not exist", param="model")
    return web.Response(
        body=msgspec.json.encode(ModelCard(id=name, created=model.created)), content_type="application/json"
    )


def decode(body: bytes) -> ChatRequest:
    """The request, or a 400 for anything a client can send wrong: bad JSON, bad types, numbers out of range,
    strings that are not UTF-8 (msgspec's UnicodeDecodeError) and nesting past `MAX_DEPTH` (past ~1,000 levels the
    decoder's own RecursionError, which cannot say where)."""
    try:
        chat = request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        param = where.rstrip("`").lstrip(".").replace("[...]", "") or None  # msgspec's "[...]": a dict's value
        raise errors.InvalidRequest(
            f"Invalid request: {message}" + (f" (at {param})" if param else ""), param=param
        ) from None
    except msgspec.DecodeError as exc:
        raise errors.InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except UnicodeDecodeError as exc:
        raise errors.InvalidRequest(
            f"The request body is not valid JSON: a string in it is not valid UTF-8 ({exc.reason})",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise errors.InvalidRequest(
            f"The request body nests JSON deeper than the {MAX_DEPTH} levels maxproxy accepts", code="too_deep"
        ) from None
    if (deep := chat.deep_field()) is not None:
        raise errors.InvalidRequest(
            f"{deep} nests JSON deeper than the {MAX_DEPTH} levels maxproxy accepts", param=deep, code="too_deep"
        )
    return chat


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    access = request[ACCESS]
    chat = decode(await request.read())
    access.model, access.stream = chat.model, chat.stream
    key = request[KEY]
    quotas = request.app[QUOTAS]
    quotas.check_model(key, chat.model)
    full = prompt.build(chat, request.app[SETTINGS])  # every check on the request, before a conversation is touched
    request.app[BREAKER].check(full.family)
    with quotas.admit(key) as limits:
        sessions = request.app[SESSIONS]
        identity = identify(chat, request.headers, request[OWNER])
        parts = split(chat.messages)
        async with sessions.exclusive(identity, parts):
            plan = await sessions.plan(identity, chat, parts, full)
            access.session = plan.record.public_id
            access.continued = plan.continuing
            try:
                return await _run(request, chat, plan, limits)
            except ResumeFailed as exc:
                log.warning("session_resume_failed", session=plan.resume, error=exc.message)
                plan = await sessions.plan(identity, chat, parts, full, replay=True)
                access.continued = False
                return await _run(request, chat, plan, limits)


async def _run(request: web.Request, chat: ChatRequest, plan: Plan, limits: dict[str, str]) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    headers: dict[str, str] = {"x-session-id": plan.record.public_id, **limits}
    if ignored := ignored_fields(chat):
        headers["x-maxproxy-ignored-params"] = ",".join(ignored)
    turn = plan.turn
    answer = Answer(request, chat, headers, continuation=turn.results is not None)
    pool = request.app[POOL]
    conversation_id = plan.record.id if plan.continuing else None
    key = request[KEY].name
    async with pool.acquire(
        turn.launch, turn.family, model=chat.model, conversation=conversation_id, resume=plan.resume, key=key
    ) as lease:
        sessions = request.app[SESSIONS]
        await sessions.claim(plan, lease)
        watchdog = Watchdog(settings.inactivity_timeout, settings.max_turn_seconds)
        ended = False
        try:
            if chat.stream:
                response = await answer.stream(lease, turn, watchdog)
            else:
                response = await answer.complete(lease, turn, watchdog)
            ended = answer.ended_normally(lease)
        except errors.Timeout as exc:
            _alert_timeout(request, chat.model, exc.message)
            raise
        finally:
            await asyncio.shield(sessions.settle(plan, lease, answer.assembler.message() if ended else None))
            _account(request, chat.model, turn.family, answer, lease)
        return response


def _alert_timeout(request: web.Request, model: str, message: str) -> None:
    who = request[KEY].name
    request.app[BUS].announce(Alert("timeout", f"{who} · {model}: {message}"))


def _account(request: web.Request, model: str, family: str, answer: Answer, lease: Lease) -> None:
    """Record what the answer used, and let the breaker read the turn's rate-limit state."""
    assembler = answer.assembler
    request.app[BREAKER].observe(family, assembler.rate_limit, assembler.result)
    _note_login(request.app[CLI], assembler.result)
    usage = assembler.usage()
    cost = lease.worker.turn_cost if assembler.result is not None else 0.0
    if not (usage.total_tokens or cost):
        return
    key = request[KEY].name
    request.app[METRICS].used(key, model, usage, cost)
    request.app[LEDGER].note(key, model, usage, cost)


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


@routes.get("/v1/usage")
async def get_usage(request: web.Request) -> web.Response:
    """Usage by key, model and UTC day: a key sees its own; an admin key sees every key's (or one: `?key=NAME`)."""
    key = request[KEY]
    try:
        days = int(request.query.get("days", "30"))
        if not 1 <= days <= 366:
            raise ValueError
    except ValueError:
        raise errors.InvalidRequest("days must be a whole number from 1 to 366", param="days") from None
    wanted = request.query.get("key")
    if not key.admin and wanted not in (None, key.name):
        raise errors.Forbidden("Only an admin key can read other keys' usage", param="key")
    who = wanted if key.admin else key.name
    since = (today() - dt.timedelta(days=days - 1)).isoformat()
    ledger = request.app[LEDGER]
    await ledger.flush()
    rows = await ledger.rows.since(since, who)
    data = [{**msgspec.structs.asdict(row), "total_tokens": row.total_tokens} for row in rows]
    totals = {
        name: sum(item[name] for item in data)
        for name in ("requests", "input_tokens", "cached_tokens", "output_tokens", "total_tokens", "cost_usd")
    }
    return web.json_response({"object": "list", "since": since, "data": data, "totals": totals})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    if request.app[KEYS].enabled and not request[KEY].admin:
        raise errors.Forbidden("Metrics need an admin key")
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


@routes.get("/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    records = await sessions.store.owned_by(request[OWNER])
    return web.json_response({"object": "list", "data": [sessions.describe(r) for r in records]})


@routes.delete("/v1/sessions/{id}")
async def delete_session(request: web.Request) -> web.Response:
    public_id = request.match_info["id"]
    if not await request.app[SESSIONS].forget(request[OWNER], public_id):
        raise errors.NotFound(f"No session {public_id!r}", param="id", code="session_not_found")
    return web.json_response({"id": public_id, "object": "session", "deleted": True})


class Answer:
    """One chat completion being answered: the events of its turn go to the client as JSON or as SSE chunks."""

    def __init__(
        self, request: web.Request, chat: ChatRequest, headers: dict[str, str], *, continuation: bool = False
    ) -> None:
        self.request = request
        self.chat = chat
        self.headers = headers
        self.id = reply.new_id()
        self.created = int(time.time())
        self.started = time.monotonic()
        self.assembler = reply.Assembler(
            streaming=chat.stream, continuation=continuation, cli_path=request.app[CLI].path
        )
        self.access = request[ACCESS]
        self._interrupted = False

    def _take(self, event: TurnEvent) -> str:
        """Feed one event; returns the text the client may see now."""
        text = self.assembler.feed(event)
        if isinstance(event, System) and event.subtype == "init" and event.apiKeySource is not None:
            self.request.app[CLI].api_key_source = event.apiKeySource
        return text

    async def _limit(self, lease: Lease) -> None:
        # The CLI would "continue" past the output limit on its own; the client asked for this many tokens.
        if self.assembler.stop_requested and not self._interrupted:
            self._interrupted = True
            await lease.interrupt()

    def ended_normally(self, lease: Lease) -> bool:
        """The turn is one the conversation can continue from: answered in full (or stopped at tool calls the client
        now has), with no error, nothing cut."""
        if self.assembler.failure() is not None or self.access.disconnected or lease.worker.interrupted:
            return False
        if self.assembler.suspended:
            return lease.worker.waiting
        return self.assembler.finish_reason == "stop" and not lease.worker.in_turn

    def _first_token(self) -> None:
        if self.access.ttft_ms is None:
            self.access.ttft_ms = round((time.monotonic() - self.started) * 1000, 1)

    def _finish_access(self) -> None:
        if self.assembler.suspended:
            self.access.tool_calls = len(self.assembler.calls)
        usage = self.assembler.usage()
        self.access.prompt_tokens = usage.prompt_tokens
        self.access.completion_tokens = usage.completion_tokens

    async def complete(self, lease: Lease, turn: prompt.Turn, watchdog: Watchdog) -> web.Response:
        await lease.apply(turn.options, turn.toolset)
        async with contextlib.aclosing(lease.turn(turn.lines, watchdog, results=turn.results)) as events:
            async for event in events:
                if event is not None:  # no ticks were asked for; None never comes
                    self._take(event)
                    await self._limit(lease)
                if self.assembler.error is not None or self.assembler.suspended:
                    break
        if failure := self.assembler.failure():
            raise failure
        self._finish_access()
        body = reply.completion(self.id, self.created, self.chat.model, self.assembler)
        return web.Response(body=body, content_type="application/json", headers=self.headers)

    async def stream(self, lease: Lease, turn: prompt.Turn, watchdog: Watchdog) -> web.StreamResponse:
        settings = self.request.app[SETTINGS]
        chunks = reply.Chunks(self.id, self.created, self.chat.model)
        out = Stream(self.request, self.headers, settings.keepalive_interval, chunks.role())
        try:
            failure = await self._relay(lease, turn, watchdog, out, chunks)
            if failure is not None and not out.open:
                raise failure
            if failure is None:
                self._finish_access()
                await out.send(chunks.finish(self.assembler.finish_reason))
                if self.chat.stream_options is not None and self.chat.stream_options.include_usage:
                    await out.send(chunks.usage(self.assembler.usage()))
            else:
                self.access.error = failure.code
                log.warning("stream_failed", code=failure.code, message=failure.message)
                if isinstance(failure, errors.Timeout):
                    _alert_timeout(self.request, self.chat.model, failure.message)
                await out.send(failure.body())
            return await out.close()
        except (ConnectionResetError, TimeoutError):
            # The client went away or stopped reading; leaving the pool context interrupts and stops the turn.
            self.access.disconnected = True
            return out.response

    async def _relay(
        self, lease: Lease, turn: prompt.Turn, watchdog: Watchdog, out: Stream, chunks: reply.Chunks
    ) -> errors.ProxyError | None:
        """Stream the turn's text as it comes; the error that ends it, if any."""
        await lease.apply(turn.options, turn.toolset)
        tick = self.request.app[SETTINGS].keepalive_interval
        try:
            events = lease.turn(turn.lines, watchdog, tick=tick, results=turn.results)
            async with contextlib.aclosing(events):
                async for event in events:
                    if event is None:  # silence: open the stream so that keepalives can flow
                        await out.send(b"")
                    elif text := self._take(event):
                        self._first_token()
                        await out.send(chunks.content(text))
                    elif isinstance(event, ToolCall) and event.refusal is None:
                        self._first_token()
                        for payload in chunks.tool_call(len(self.assembler.calls) - 1, event):
                            await out.send(payload)
                    elif self.assembler.stop_requested:
                        await self._limit(lease)
                    if self.assembler.error is not None or self.assembler.suspended:
                        break
        except errors.ProxyError as exc:
            return exc
        return self.assembler.failure()
