"""The HTTP handlers: `GET /health`, `GET /v1/models[/{id}]`, `POST /v1/chat/completions` (JSON or SSE),
`POST /v1/responses` (the OpenAI Responses API, JSON or SSE) with its stored responses (`GET`/`DELETE
/v1/responses/{id}`, `GET /v1/responses/{id}/input_items`; `previous_response_id` continues from one, see
`api.stored_responses`), `POST /v1/messages/count_tokens` (an estimate), `GET/DELETE /v1/sessions`, `GET /v1/usage`
and `GET /metrics`. The model list answers in Anthropic's shape when the request carries `anthropic-version`.

A chat request is decoded and checked by its wire module (`wire.chat`), which makes it a neutral `TurnRequest`; the
turn core (`turns.core`) admits it, runs it on a worker and yields neutral events, which the wire module renders and
`api.sse` writes (`relay`: SSE, `complete`: one JSON body). Streams hold their response headers until the first
token or the first keepalive tick, so an error that comes early still gets its real HTTP status; after that an error
becomes a final `data: {"error": ...}` event before `[DONE]`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable

import msgspec
import structlog
from aiohttp import web

from maxproxy import __version__, errors
from maxproxy.api import stored_responses
from maxproxy.api.sse import complete, relay
from maxproxy.catalog import Catalog
from maxproxy.metrics import CONTENT_TYPE
from maxproxy.pool import Pool
from maxproxy.pool.holder import WorkerState
from maxproxy.state import (
    ACCESS,
    BREAKER,
    BUS,
    CLI,
    KEY,
    KEYS,
    LEDGER,
    METRICS,
    MODELS,
    OWNER,
    PLAN,
    POOL,
    QUOTAS,
    RECENT,
    SESSIONS,
    SETTINGS,
)
from maxproxy.store import UsageRow
from maxproxy.turns.core import Caller, Core, Outcome
from maxproxy.usage import today
from maxproxy.wire import chat, messages, models, responses, token_count
from maxproxy.wire.models import ModelCard, ModelList

routes = web.RouteTableDef()
STATUS_REFRESH_SECONDS = 3  # how often the status page asks again
TOTALS = ("requests", "input_tokens", "cached_tokens", "output_tokens", "total_tokens", "cost_usd")
_encode = msgspec.json.Encoder().encode
ANTHROPIC_VERSION = "anthropic-version"  # sent by the Anthropic SDKs: their model list wants Anthropic's shape


def _problems(app: web.Application) -> list[str]:
    """What keeps maxproxy from serving, each said so that it can be fixed (as `maxproxy doctor` would)."""
    cli, pool = app[CLI], app[POOL]
    problems = []
    if (problem := cli.problem()) is not None:
        problems.append(problem)
    if pool.backoff_seconds:
        problems.append(
            f"CLI workers keep failing to start ({pool.last_error}); retrying in {pool.backoff_seconds:.0f}s"
        )
    if pool.draining:
        problems.append("shutting down")
    return problems


def _workers(pool: Pool) -> dict[str, int]:
    return {"total": pool.total, "busy": pool.busy, "idle": pool.idle, "starting": pool.starting, "queued": pool.queued}


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    cli = request.app[CLI]
    pool = request.app[POOL]
    problems = _problems(request.app)
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
        "workers": _workers(pool),
        "breaker": _breaker(request.app),
        "plan": request.app[PLAN].summary(),  # e.g. "five_hour 97%, seven_day 41%" (None: nothing heard yet)
    }
    headers = {} if ready else {"Retry-After": str(max(1, round(pool.backoff_seconds or 5)))}
    return web.json_response(body, status=200 if ready else 503, headers=headers)


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    table = request.app[MODELS]
    if ANTHROPIC_VERSION in request.headers:  # the Anthropic SDKs' `models.list()`
        body = msgspec.json.encode(models.anthropic_page(table, request.query))
    else:
        body = msgspec.json.encode(ModelList(data=[ModelCard(id=name, created=m.created) for name, m in table.items()]))
    return web.Response(body=body, content_type="application/json")


@routes.get("/v1/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    model = request.app[MODELS].get(name)
    if model is None:
        raise errors.ModelNotFound(f"The model {name!r} does not exist", param="model")
    if ANTHROPIC_VERSION in request.headers:
        body = msgspec.json.encode(models.anthropic_card(name, model))
    else:
        body = msgspec.json.encode(ModelCard(id=name, created=model.created))
    return web.Response(body=body, content_type="application/json")


@routes.post("/v1/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    """An estimate (`wire.token_count`), never a model call; the header says so."""
    asked = token_count.decode_request(await request.read())
    if asked.model not in request.app[MODELS]:
        raise errors.ModelNotFound(
            f"The model {asked.model!r} does not exist; GET /v1/models lists the models maxproxy serves",
            param="model",
        )
    headers = {token_count.HEADER: "estimate"}
    return web.json_response({"input_tokens": token_count.estimate(asked)}, headers=headers)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    chat_request = chat.decode(await request.read())
    turn = _core(request).turn(chat.to_turn(chat_request), _caller(request))
    answer = chat.Answer(chat_request)
    if chat_request.stream:
        return await relay(request, turn, answer, request.app[SETTINGS].keepalive_interval)
    return await complete(turn, answer)


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    asked = responses.decode_request(await request.read())
    # With previous_response_id (or item_reference), the input as a client that resends it whole would send it.
    thread = stored_responses.Thread(request.app[SESSIONS], request[OWNER])
    whole = await thread.load(asked)
    try:
        translated = responses.to_chat(whole)
    except errors.ProxyError as exc:
        raise thread.shifted(exc) from None
    turn = _core(request).turn(responses.to_turn(whole, translated), _caller(request))
    answer = responses.Answer(whole, translated)

    async def keep(outcome: Outcome) -> None:
        await thread.keep(request, answer.stream, outcome)

    ending = keep if translated.store else None
    try:
        if asked.stream:
            return await relay(request, turn, answer, request.app[SETTINGS].keepalive_interval, ending)
        return await complete(turn, answer, ending)
    except errors.ProxyError as exc:
        # A check on the neutral turn names the Responses field, in the client's own input.
        raise thread.shifted(translated.remap(exc)) from None


@routes.post("/v1/messages")
async def create_message(request: web.Request) -> web.StreamResponse:
    """Anthropic's Messages API (`wire.messages`); its errors are in Anthropic's shape (`errors.shape_of`)."""
    asked = messages.decode_request(await request.read())
    translated = messages.translate(asked, request.headers)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    betas = messages.ignored_betas(request.headers.get("anthropic-beta"))
    answer = messages.Answer(asked, translated, request_id=request_id, betas=betas)
    turn = _core(request).turn(translated.turn, _caller(request))
    try:
        if asked.stream:
            return await relay(request, turn, answer, request.app[SETTINGS].keepalive_interval)
        return await complete(turn, answer)
    except errors.ProxyError as exc:
        raise translated.remap(exc) from None  # a check on the neutral turn names the Messages field


@routes.get("/v1/responses/{id}")
async def retrieve_response(request: web.Request) -> web.Response:
    body = await stored_responses.retrieve(request.app[SESSIONS], request[OWNER], request.match_info["id"])
    return web.Response(body=body, content_type="application/json")


@routes.delete("/v1/responses/{id}")
async def delete_response(request: web.Request) -> web.Response:
    deleted = await stored_responses.delete(request.app[SESSIONS], request[OWNER], request.match_info["id"])
    return web.json_response(deleted)


@routes.get("/v1/responses/{id}/input_items")
async def list_input_items(request: web.Request) -> web.Response:
    sessions, owner, response_id = request.app[SESSIONS], request[OWNER], request.match_info["id"]
    return web.json_response(await stored_responses.input_items(sessions, owner, response_id, request.query))


def _core(request: web.Request) -> Core:
    app = request.app
    catalog: Catalog = app[MODELS]
    return Core(
        settings=app[SETTINGS],
        pool=app[POOL],
        sessions=app[SESSIONS],
        quotas=app[QUOTAS],
        breaker=app[BREAKER],
        cli=app[CLI],
        bus=app[BUS],
        models=catalog,
    )


def _caller(request: web.Request) -> Caller:
    return Caller(key=request[KEY], owner=request[OWNER], headers=request.headers, access=request[ACCESS])


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
    totals = _totals(rows)
    plan = msgspec.to_builtins(request.app[PLAN].snapshot())  # the subscription's, whichever key asks
    return web.json_response({"object": "list", "since": since, "data": data, "totals": totals, "plan": plan})


def _breaker(app: web.Application) -> list[dict[str, object]]:
    return [{"scope": trip.scope, "until": int(trip.until), "reason": trip.reason} for trip in app[BREAKER].state()]


def _admin(request: web.Request, message: str) -> None:
    if request.app[KEYS].enabled and not request[KEY].admin:
        raise errors.Forbidden(message)


@routes.post("/v1/usage/plan/refresh")
async def refresh_plan(request: web.Request) -> web.Response:
    """Ask the CLI for the plan's windows now (its usage endpoint; never a billed request)."""
    _admin(request, "Refreshing the plan needs an admin key")
    plan = request.app[PLAN]
    if await plan.refresh() is None:
        raise errors.Unavailable("No CLI worker is between turns to ask; try again in a few seconds", retry_after=5)
    return web.Response(body=_encode({"plan": plan.snapshot()}), content_type="application/json")


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    """Everything the status page shows, in one answer (admin): the plan, the breaker, workers and queues, each key's
    usage today, over 7 days and by the hour, the last requests, the CLI and any problem."""
    _admin(request, "The status needs an admin key")
    app = request.app
    cli, pool, ledger, catalog = app[CLI], app[POOL], app[LEDGER], app[MODELS]
    await ledger.flush()
    first_day = today()
    rows = await ledger.rows.since((first_day - dt.timedelta(days=6)).isoformat())
    by_key: dict[str, list[UsageRow]] = {}
    for row in rows:
        by_key.setdefault(row.key, []).append(row)
    states = pool.by_state()
    depths = pool.queue_depths()
    families = sorted({model.family for model in catalog.values()} | set(depths))
    body = {
        "version": __version__,
        "now": time.time(),
        "refresh_seconds": STATUS_REFRESH_SECONDS,
        "problems": _problems(app),
        "cli": {
            "version": cli.version,
            "pinned_version": cli.pinned_version,
            "path": cli.path,
            "login": cli.token_source,
            "subscription_type": cli.subscription_type,
            "billing": cli.billing,
            "logged_in": cli.logged_in,
        },
        "breaker": _breaker(app),
        "plan": app[PLAN].snapshot(),
        "workers": {
            **_workers(pool),
            "max": app[SETTINGS].max_workers,
            "states": {state.value: states[state] for state in WorkerState},
        },
        "families": [
            {
                "family": family,
                "busy": pool.admission.busy_in(family),
                "limit": min(app[SETTINGS].limits.of(family), app[SETTINGS].max_workers),
                "queued": depths.get(family, 0),
            }
            for family in families
        ],
        "keys": [
            {
                "name": name,
                "today": _totals(row for row in kept if row.day == first_day.isoformat()),
                "week": _totals(kept),
                "hours": ledger.hours(name),
            }
            for name, kept in sorted(by_key.items())
        ],
        "recent": app[RECENT].entries(),
    }
    return web.Response(body=_encode(body), content_type="application/json", headers={"Cache-Control": "no-store"})


def _totals(rows: Iterable[UsageRow]) -> dict[str, float]:
    """The sums `GET /v1/usage` and the status page show (tokens stay whole numbers)."""
    kept = list(rows)
    return {name: sum(getattr(row, name) for row in kept) for name in TOTALS}


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    _admin(request, "Metrics need an admin key")
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
