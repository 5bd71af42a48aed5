"""The long-conversation case (`--long`): an OpenClaw-shaped conversation (`shapes.openclaw_body`: a 26 k-character
system prompt, 12 function tools, each request streamed and resending the whole history under one
`prompt_cache_key`) of 20 turns, timed to the first content chunk of each turn three ways: (a) continued — maxproxy's
normal path, the worker that holds the conversation gets only the new turn; (b) replayed — the conversation is
deleted (`DELETE /v1/sessions/{id}`, README "Conversations") after each turn, so the next request starts over from
its whole history on a clean worker; (c) the cold CLI replaying it — one `claude` process per request, spawned and
initialised as a worker is (`floor.WarmCLI`, the client's tools listed), fed the very lines maxproxy would write for
that request (`prompt.build`), timed from the spawn. maxproxy runs as its own process with 2 workers; before each
turn the workers' CPU settles (`procfs.settle`), and the access log says whether each turn was continued.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from maxproxy import prompt
from maxproxy.bench import procfs, shapes
from maxproxy.bench.daemon import daemon
from maxproxy.bench.floor import WarmCLI
from maxproxy.catalog import Catalog
from maxproxy.claude.command import Options
from maxproxy.settings import Settings
from maxproxy.wire import chat

TURNS = 20
SETTLE_MAX = 15.0  # seconds at most to wait for the workers' CPU before a turn


@dataclass
class Series:
    name: str
    ttfts: list[float] = field(default_factory=list)  # seconds, per turn
    continued: list[bool | None] = field(default_factory=list)  # per turn, from the access log (maxproxy only)
    settled: list[float] = field(default_factory=list)  # seconds waited for quiet workers before each turn


async def _turn(http: aiohttp.ClientSession, url: str, body: dict[str, Any], rid: str) -> tuple[float, str, str]:
    """One streamed request: (seconds to its first content chunk, the answer's text, its `x-session-id`)."""
    started = time.perf_counter()
    first, text = 0.0, []
    async with http.post(f"{url}/v1/chat/completions", json=body, headers={"x-request-id": rid}) as response:
        assert response.status == 200, await response.text()
        session = response.headers["x-session-id"]
        async for raw in response.content:
            if raw.startswith(b"data: {") and b'"choices":[{' in raw:
                content = json.loads(raw[6:])["choices"][0]["delta"].get("content")
                if content:
                    first = first or time.perf_counter() - started
                    text.append(content)
    return first, "".join(text), session


async def _proxied(env: dict[str, str], turns: int) -> tuple[Series, Series, list[str]]:
    """(continued, replayed, the answers of the continued conversation)."""
    env = {
        **env,
        "MAXPROXY_STATE_DIR": env["MAXPROXY_STATE_DIR"] + "-long",
        "MAXPROXY_MAX_WORKERS": "2",
        "MAXPROXY_MIN_IDLE": "2",
        "MAXPROXY_LIMIT_SONNET": "2",
    }
    answers: list[str] = []
    out = (Series("continued"), Series("replayed"))
    async with daemon(env) as (proc, url, records), aiohttp.ClientSession() as http:
        workers = lambda: procfs.children_of(proc.pid)  # noqa: E731
        for series in out:
            key = f"bench-{uuid.uuid4().hex[:12]}"
            history: list[dict[str, Any]] = []
            for turn in range(1, turns + 1):
                body = shapes.openclaw_body(history, turn, key)
                series.settled.append((await procfs.settle(workers, maximum=SETTLE_MAX))[0])
                rid = f"long-{series.name}-{turn}"
                ttft, text, session = await _turn(http, url, body, rid)
                series.ttfts.append(ttft)
                history += [body["messages"][-2], {"role": "assistant", "content": text}]
                if series.name == "continued":
                    answers.append(text)
                else:  # the next request finds no conversation: it starts over from its history
                    async with http.delete(f"{url}/v1/sessions/{session}") as response:
                        assert response.status == 200, await response.text()
        proc.terminate()
        await proc.wait()
    for series in out:  # the access lines are all in once the daemon has exited
        access = {r.get("request_id"): r.get("continued") for r in records if r.get("event") == "request"}
        series.continued = [access.get(f"long-{series.name}-{turn}") for turn in range(1, turns + 1)]
    return *out, answers


async def _cold(settings: Settings, answers: list[str]) -> Series:
    """Each request of the conversation into its own cold CLI, as maxproxy would replay it into a clean worker."""
    series, models = Series("cold CLI replaying"), Catalog(settings)
    history: list[dict[str, Any]] = []
    for turn, answer in enumerate(answers, 1):
        body = shapes.openclaw_body(history, turn, "cold")
        planned = prompt.build(chat.to_turn(chat.decode(json.dumps(body).encode())), settings, models)
        listing = planned.toolset.listing() if planned.toolset else []
        started = time.perf_counter()
        cli = await WarmCLI.start(settings, planned.launch, listing)
        try:
            if planned.options != Options():  # a worker applies the turn's output limit the same way
                await cli.control("apply_flag_settings", settings=planned.options.flag_settings())
            series.ttfts.append((await cli.replay(planned.lines, since=started))[0])
        finally:
            await cli.close()
        series.settled.append(0.0)
        history += [body["messages"][-2], {"role": "assistant", "content": answer}]
    return series


async def run(env: dict[str, str], settings: Settings, turns: int = TURNS) -> list[Series]:
    continued, replayed, answers = await _proxied(env, turns)
    return [continued, replayed, await _cold(settings, answers)]


def report(table: list[Series]) -> None:
    turns = len(table[0].ttfts)
    print(
        f"\nLong conversation (OpenClaw-shaped: {len(shapes.SYSTEM)}-character system prompt,"
        f" {len(shapes.OPENCLAW_TOOLS)} tools, {turns} turns, the whole history resent each time); stream TTFT ms:"
    )
    print("| turn | " + " | ".join(s.name for s in table) + " |")
    print("|---|" + "---|" * len(table))
    for i in range(turns):
        print(f"| {i + 1} | " + " | ".join(f"{s.ttfts[i] * 1000:.1f}" for s in table) + " |")
    last = turns - 1
    for s in table:
        if turns >= 2:
            second, final = s.ttfts[1] * 1000, s.ttfts[last] * 1000
            print(
                f"{s.name}: turn 2 {second:.1f} ms, turn {turns} {final:.1f} ms"
                f" ({final / second:.2f}x, {final - second:+.1f} ms)"
            )
        if turns >= 6:  # one sample per turn is noisy: the medians of three turns at either end as well
            early, late = (statistics.median(s.ttfts[i : i + 3]) * 1000 for i in (1, turns - 3))
            print(
                f"  median of turns 2-4 {early:.1f} ms, of turns {turns - 2}-{turns} {late:.1f} ms"
                f" ({late / early:.2f}x, {late - early:+.1f} ms)"
            )
        if s.continued and any(c is not None for c in s.continued):
            later = s.continued[1:]
            print(f"  continued per the access log: {sum(1 for c in later if c)} of turns 2-{turns}")
        if any(s.settled):
            print(
                f"  workers settled before each turn in median {statistics.median(s.settled):.1f} s"
                f" (max {max(s.settled):.1f} s)"
            )
