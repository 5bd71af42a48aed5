"""`make bench`: maxproxy with its warm pool against the direct cold CLI, on the fake upstream (50 tokens x 10 ms).

The fake Anthropic upstream and the clients run in this process; maxproxy runs as its own process (`python -m maxproxy`,
real pinned CLI), so that its CPU and memory are measured apart from its CLI workers'. The cases, in one run: (a) the
direct cold CLI, one `claude -p` stream-json process per request — the floor of any spawn-per-request proxy; (b)
maxproxy: streaming time to first token p50/p95, non-streaming latency, throughput, at concurrency 1, 4 and 8, for Chat
Completions, the Responses API and the Messages API side by side; CPU seconds per request (maxproxy + its CLI workers);
maxproxy's RSS and the total with its workers; and the proxy's own CPU per streamed chunk against the CLI's; (c) a
function-calling round trip (a request with tools gets a tool call, the client sends the result): the follow-up's time
to first token when it goes on with the waiting CLI turn, against the same follow-up replayed into a clean worker (its
conversation deleted first); (d) the physical floor beside them (`bench.floor`: one warm CLI started as a worker is, fed
turns directly, alone and with a rewind after each turn; then 8 of them fed directly, `bench.floor.Fleet`): TTFT p50 at
concurrency 1, the CLI's CPU per 50-token turn against the workers' CLI CPU per request, and the scaling at concurrency
8 (req/s over 8 uncontended single streams) beside the fleet's, which is what this machine's cores allow without any
proxy; (e) the control requests around each kind of turn and what they cost (`bench.controls`; `--controls` runs only
that); (f) a long OpenClaw-shaped conversation, TTFT per turn continued, replayed and through the cold CLI
(`bench.long_conversation`; `--long` runs only that). Before each case the CLI processes' CPU settles (`procfs.settle`:
polled until quiet, at most 30 s; the `settled_s` column). Timing goals live here, never in the tests. Every request
goes to 127.0.0.1; every loop is bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import msgspec

from maxproxy.bench import controls, long_conversation
from maxproxy.bench.daemon import daemon
from maxproxy.bench.floor import Fleet, WarmCLI, spawn
from maxproxy.bench.procfs import children_of, cpu_of, pss_of, rss_of, settle
from maxproxy.bench.shapes import HELLO, WEATHER
from maxproxy.bench.upstream import FakeUpstream, Received, Reply, Text, ToolUse
from maxproxy.claude import command
from maxproxy.settings import Settings

TOKENS, DELAY = 50, 0.010
CONCURRENCY = (1, 4, 8)
TOOL_CONCURRENCY = (1, 4)
SETTLE_MAX = 30.0  # seconds at most to wait for the CLI processes' CPU to go quiet before a case
FLOOR = "warm CLI alone (floor)"
FLEET = f"{max(CONCURRENCY)} warm CLIs, fed directly"


def call_tools(received: Received) -> Reply | None:
    """The fake model calls the tool when it has tools, is asked about the weather, and has no tool result yet;
    otherwise the default answer."""
    if not received.body.get("tools"):
        return None
    content = [m for m in received.messages if m["role"] == "user"][-1]["content"]
    if isinstance(content, list) and any(b.get("type") == "tool_result" for b in content):
        return None
    if "Weather" not in json.dumps(content):
        return None
    return Reply(blocks=(ToolUse("get_weather", {"city": "Paris"}),), stop_reason="tool_use")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Server:
    """maxproxy as a separate process, with CPU accounting for it and its CLI workers."""

    pid: int
    url: str
    seen: dict[int, float] = field(default_factory=dict)

    def cpu(self) -> tuple[float, float]:
        """(maxproxy's own CPU seconds, its CLI workers' CPU seconds) so far."""
        own = cpu_of(self.pid)
        reaped = cpu_of(self.pid, children=True) - own
        for child in children_of(self.pid):
            self.seen[child] = cpu_of(child)
        live = sum(cpu for pid, cpu in self.seen.items() if Path(f"/proc/{pid}").exists())
        return own, reaped + live

    def pids(self) -> list[int]:
        return children_of(self.pid)

    def rss(self) -> tuple[int, int, int]:
        """maxproxy's RSS; its RSS with its workers' (shared pages counted in each); their PSS (counted once)."""
        own, children = rss_of(self.pid), children_of(self.pid)
        return own, own + sum(rss_of(child) for child in children), pss_of(self.pid) + sum(map(pss_of, children))


async def direct_cli(settings: Settings) -> tuple[float, float, int]:
    """One cold `claude` process for one request: (time to first text delta, total, text deltas)."""
    started = time.perf_counter()
    proc = await spawn(settings, command.Launch(model="sonnet"))
    assert proc.stdin is not None
    assert proc.stdout is not None
    line = {
        "type": "user",
        "message": {"role": "user", "content": "hi"},
        "parent_tool_use_id": None,
        "client_composed": True,
    }
    proc.stdin.write(json.dumps(line).encode() + b"\n")
    proc.stdin.close()
    first, deltas = 0.0, 0
    async for raw in proc.stdout:
        if b'"text_delta"' in raw:
            deltas += 1
            first = first or time.perf_counter() - started
    await proc.wait()
    return first, time.perf_counter() - started, deltas


async def stream(http: aiohttp.ClientSession, url: str, body: Mapping[str, object]) -> tuple[float, int]:
    """One streamed answer: (seconds to its first content chunk, content chunks)."""
    started = time.perf_counter()
    first, chunks = 0.0, 0
    async with http.post(url, json={**body, "stream": True}) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            if raw.startswith(b"data: {") and b'"delta":{"content":' in raw:
                chunks += 1
                first = first or time.perf_counter() - started
    return first, chunks


async def proxy_stream(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    first, chunks = await stream(http, url, HELLO)
    return first, time.perf_counter() - started, chunks


async def proxy_complete(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    async with http.post(url, json=HELLO) as response:
        assert response.status == 200, await response.text()
        await response.read()
    total = time.perf_counter() - started
    return total, total, 0


async def responses_stream(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    """One streamed Responses answer, timed as chat's: to its first `response.output_text.delta`."""
    started = time.perf_counter()
    first, chunks = 0.0, 0
    body = {"model": HELLO["model"], "input": "hi", "stream": True}
    async with http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            if raw.startswith(b"event: response.output_text.delta"):
                chunks += 1
                first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, chunks


async def responses_complete(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    async with http.post(url, json={"model": HELLO["model"], "input": "hi"}) as response:
        assert response.status == 200, await response.text()
        await response.read()
    total = time.perf_counter() - started
    return total, total, 0


MESSAGE = {"model": HELLO["model"], "max_tokens": 1024, "messages": HELLO["messages"]}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


async def messages_stream(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    """One streamed Messages answer, timed as chat's: to its first `content_block_delta` carrying a `text_delta`."""
    started = time.perf_counter()
    first, chunks = 0.0, 0
    async with http.post(url, json={**MESSAGE, "stream": True}, headers=ANTHROPIC) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            if raw.startswith(b"data: {") and b'"text_delta"' in raw:
                chunks += 1
                first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, chunks


async def messages_complete(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    async with http.post(url, json=MESSAGE, headers=ANTHROPIC) as response:
        assert response.status == 200, await response.text()
        await response.read()
    total = time.perf_counter() - started
    return total, total, 0


async def tool_round_trip(http: aiohttp.ClientSession, url: str, *, replay: bool) -> tuple[float, float, int]:
    """A request with tools → a tool call → the follow-up with the result: (the follow-up's time to first token,
    the whole round trip, content chunks)."""
    started = time.perf_counter()
    history: list[dict[str, object]] = [{"role": "user", "content": f"Weather in Paris? ({uuid.uuid4().hex})"}]
    async with http.post(url, json={**HELLO, "messages": history, "tools": [WEATHER]}) as response:
        assert response.status == 200, await response.text()
        message = (await response.json())["choices"][0]["message"]
        session = response.headers["x-session-id"]
    if replay:  # no conversation to go on with: the follow-up is replayed into a clean worker
        async with http.delete(url.replace("/chat/completions", f"/sessions/{session}")) as response:
            assert response.status == 200
    [call] = message["tool_calls"]
    history += [message, {"role": "tool", "tool_call_id": call["id"], "content": "22C, sunny"}]
    first, chunks = await stream(http, url, {**HELLO, "messages": history, "tools": [WEATHER]})
    return first, time.perf_counter() - started, chunks


Run = Callable[[], Awaitable[tuple[float, float, int]]]


class Meter(Protocol):
    def cpu(self) -> tuple[float, float]:
        """(proxy CPU seconds, CLI CPU seconds) so far."""
        ...

    def pids(self) -> list[int]:
        """The CLI processes whose CPU must settle before a case."""
        ...


async def measure(name: str, run: Run, requests: int, concurrency: int, server: Meter | None) -> dict[str, object]:
    """One case: `requests` runs, `concurrency` at a time, once the CLI processes' CPU has settled (their trailing
    bursts after the previous case's turns would land on this one)."""
    settled = (await settle(server.pids, maximum=SETTLE_MAX))[0] if server else None
    cold_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    own0, cli0 = server.cpu() if server else (0.0, 0.0)
    firsts: list[float] = []
    totals: list[float] = []
    chunks = 0
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal chunks
        async with gate:
            first, total, n = await run()
        firsts.append(first)
        totals.append(total)
        chunks += n

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - started
    if server:
        own1, cli1 = server.cpu()
        own, cli = own1 - own0, cli1 - cli0
    else:  # the cold CLIs are this process's own children
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        own, cli = 0.0, usage.ru_utime + usage.ru_stime - cold_cpu.ru_utime - cold_cpu.ru_stime
    return {
        "case": name,
        "c": concurrency,
        "n": requests,
        "ttft_p50_ms": round(statistics.median(firsts) * 1000, 1),
        "ttft_p95_ms": round(percentile(firsts, 95) * 1000, 1),
        "total_p50_ms": round(statistics.median(totals) * 1000, 1),
        "req_per_s": round(requests / wall, 2),
        "cpu_s_per_req": round((own + cli) / requests, 3),
        "cli_cpu_ms_per_req": round(cli / requests * 1000, 1),
        "proxy_cpu_ms_per_chunk": round(own / chunks * 1000, 3) if chunks and isinstance(server, Server) else "",
        "cli_cpu_ms_per_chunk": round(cli / chunks * 1000, 3) if chunks else "",
        "settled_s": "" if settled is None else round(settled, 1),
    }


async def wait_warm(server: Server, workers: int) -> None:
    async with asyncio.timeout(60):
        while len(children_of(server.pid)) < workers:
            await asyncio.sleep(0.1)


def environment(upstream: str, home: Path, workers: int) -> dict[str, str]:
    """maxproxy's environment for a bench run: the fake upstream, a temporary HOME, subscription login, `workers`
    warm workers. The CLIs the bench starts itself (floor, cold) get the client half of it through this process's
    own environment, which is set here too."""
    client = {
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": upstream,
        "CLAUDE_CODE_OAUTH_TOKEN": "bench",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    os.environ.update(client)
    os.environ.pop("ANTHROPIC_API_KEY", None)
    return {
        **os.environ,
        "MAXPROXY_STATE_DIR": str(home / "state"),
        "MAXPROXY_LOG_FORMAT": "json",
        "MAXPROXY_MAX_WORKERS": str(workers),
        "MAXPROXY_MIN_IDLE": str(workers),
        "MAXPROXY_LIMIT_SONNET": str(workers),
        "MAXPROXY_UPSTREAM_RETRIES": "0",
    }


async def main(requests: int, *, only: str | None = None, turns: int = long_conversation.TURNS) -> None:
    """The whole bench, or `only` one part of it ("controls", "long")."""
    upstream = FakeUpstream(
        default=Reply(blocks=(Text(tuple(f"tok{i} " for i in range(TOKENS))),), delay=DELAY), responder=call_tools
    )
    await upstream.start()
    home = Path(tempfile.mkdtemp(prefix="maxproxy-bench-"))
    env = environment(upstream.url, home, max(CONCURRENCY))
    settings = msgspec.convert({"state_dir": str(home / "cold"), "upstream_retries": 0}, Settings)
    settings.workspace_path.mkdir(parents=True, exist_ok=True)
    if only == "controls":
        controls.report(await controls.run(env, requests))
    elif only == "long":
        long_conversation.report(await long_conversation.run(env, settings, turns))
    else:
        await everything(env, settings, requests, turns)
    await upstream.close()


async def everything(env: dict[str, str], settings: Settings, requests: int, turns: int) -> None:
    rows: list[dict[str, object]] = []
    for concurrency in CONCURRENCY:  # cold first: the cold CLIs are the only children of this process then
        rows.append(await measure("direct cold CLI", lambda: direct_cli(settings), requests, concurrency, None))
    rows += await floor(settings, requests)
    memory: tuple[int, int, int] = (0, 0, 0)
    async with daemon(env) as (proc, url, _):
        server = Server(proc.pid, f"{url}/v1/chat/completions")
        await wait_warm(server, max(CONCURRENCY))
        responses = f"{url}/v1/responses"
        messages = f"{url}/v1/messages"
        async with aiohttp.ClientSession() as http:
            # Warm-up: every worker answers each protocol a few times first, so that no case pays for the workers'
            # first turns (measured: without it the first case measured was ~25 ms slower at concurrency 1).
            warm: list[Run] = [
                lambda: proxy_stream(http, server.url),
                lambda: responses_stream(http, responses),
                lambda: messages_stream(http, messages),
            ]
            for _ in range(3):
                for warming in warm:
                    await asyncio.gather(*(warming() for _ in range(max(CONCURRENCY))))
            waited, rate = await settle(server.pids, maximum=SETTLE_MAX)
            print(f"after the warm-up the workers' CPU settled in {waited:.1f} s ({rate:.1f} ms/s each)", flush=True)
            for concurrency in CONCURRENCY:
                rows.append(
                    await measure(
                        "maxproxy stream", lambda: proxy_stream(http, server.url), requests, concurrency, server
                    )
                )
                rows.append(
                    await measure(
                        "maxproxy non-stream", lambda: proxy_complete(http, server.url), requests, concurrency, server
                    )
                )
                rows.append(
                    await measure(
                        "responses stream", lambda: responses_stream(http, responses), requests, concurrency, server
                    )
                )
                rows.append(
                    await measure(
                        "responses non-stream",
                        lambda: responses_complete(http, responses),
                        requests,
                        concurrency,
                        server,
                    )
                )
                rows.append(
                    await measure(
                        "messages stream", lambda: messages_stream(http, messages), requests, concurrency, server
                    )
                )
                rows.append(
                    await measure(
                        "messages non-stream", lambda: messages_complete(http, messages), requests, concurrency, server
                    )
                )
            for concurrency in TOOL_CONCURRENCY:
                for replay in (False, True):
                    name = "tool follow-up " + ("replayed" if replay else "continued")
                    run = lambda replay=replay: tool_round_trip(http, server.url, replay=replay)  # noqa: E731
                    rows.append(await measure(name, run, requests, concurrency, server))
            memory = server.rss()
        proc.terminate()
        async with asyncio.timeout(60):
            await proc.wait()
    report(rows, memory)
    controls.report(await controls.run(env, max(6, requests // 3)))
    long_conversation.report(await long_conversation.run(env, settings, turns))


async def floor(settings: Settings, requests: int) -> list[dict[str, object]]:
    """The warm CLI alone (see `bench.floor`): turns at concurrency 1, then the same with a rewind after each turn;
    then as many warm CLIs as maxproxy has workers, fed directly at concurrency 1 and 8 (the scaling floor)."""
    launch = command.Launch(model="sonnet")
    rows: list[dict[str, object]] = []
    cli = await WarmCLI.start(settings, launch)
    try:
        for _ in range(5):  # its first turns are slower (measured), as a worker's are before maxproxy's warm-up
            await cli.turn()
        rows.append(await measure(FLOOR, cli.turn, requests, 1, cli))
        rows.append(await measure(FLOOR + " + rewind", lambda: cli.turn(rewind=True), requests, 1, cli))
    finally:
        await cli.close()
    fleet = await Fleet.start(settings, launch, max(CONCURRENCY))
    try:

        async def first_turns(cli: WarmCLI) -> None:  # one turn at a time: a CLI runs its turns in order
            for _ in range(3):
                await cli.turn()

        await asyncio.gather(*(first_turns(cli) for cli in fleet.clis))
        for concurrency in (1, max(CONCURRENCY)):
            rows.append(await measure(FLEET, fleet.turn, requests, concurrency, fleet))
    finally:
        await fleet.close()
    return rows


def report(rows: list[dict[str, object]], memory: tuple[int, int, int]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for line in rows:
        print("| " + " | ".join(str(line[c]) for c in columns) + " |")
    workers = max(CONCURRENCY)
    print(
        f"\nmaxproxy RSS {memory[0] / 2**20:.0f} MiB; with its {workers} warm workers {memory[1] / 2**20:.0f} MiB"
        f" (RSS summed: the CLI's shared pages once per worker), {memory[2] / 2**20:.0f} MiB PSS (shared pages once)"
    )

    def pick(case: str, c: int, column: str) -> float:
        return float(str(next(r for r in rows if r["case"] == case and r["c"] == c)[column]))

    for c in TOOL_CONCURRENCY:
        continued = pick("tool follow-up continued", c, "ttft_p50_ms")
        replayed = pick("tool follow-up replayed", c, "ttft_p50_ms")
        print(
            f"concurrency {c}: tool follow-up TTFT p50 {continued:.0f} ms on the waiting turn, "
            f"{replayed:.0f} ms replayed ({replayed / continued:.1f}x)"
        )
    for c in CONCURRENCY:
        chat, resp = pick("maxproxy stream", c, "ttft_p50_ms"), pick("responses stream", c, "ttft_p50_ms")
        print(f"concurrency {c}: stream TTFT p50 chat {chat:.1f} ms, responses {resp:.1f} ms ({resp - chat:+.1f} ms)")
    for c in CONCURRENCY:
        chat, msgs = pick("maxproxy stream", c, "ttft_p50_ms"), pick("messages stream", c, "ttft_p50_ms")
        print(f"concurrency {c}: stream TTFT p50 chat {chat:.1f} ms, messages {msgs:.1f} ms ({msgs - chat:+.1f} ms)")
    floor_ttft, floor_cpu = pick(FLOOR, 1, "ttft_p50_ms"), pick(FLOOR, 1, "cli_cpu_ms_per_req")
    rewind_cpu = pick(FLOOR + " + rewind", 1, "cli_cpu_ms_per_req") - floor_cpu
    print(
        f"floor (one warm CLI fed turns, concurrency 1): stream TTFT p50 {floor_ttft:.1f} ms, CLI CPU per 50-token"
        f" turn {floor_cpu:.1f} ms; a rewind after each turn adds {rewind_cpu:+.1f} ms CLI CPU per turn"
    )
    fleet_single, fleet_c8 = pick(FLEET, 1, "req_per_s"), pick(FLEET, max(CONCURRENCY), "req_per_s")
    print(
        f"floor of scaling ({FLEET}): c1 TTFT p50 {pick(FLEET, 1, 'ttft_p50_ms'):.1f} ms, CLI CPU per turn"
        f" {pick(FLEET, 1, 'cli_cpu_ms_per_req'):.1f} ms with the idle ones counted; scaling at c{max(CONCURRENCY)}"
        f" {fleet_c8 / (max(CONCURRENCY) * fleet_single):.2f} ({fleet_c8:.2f} of {max(CONCURRENCY) * fleet_single:.2f}"
        " req/s)"
    )
    for case in ("maxproxy stream", "responses stream", "messages stream"):
        ttft, cpu = pick(case, 1, "ttft_p50_ms"), pick(case, 1, "cli_cpu_ms_per_req")
        single, c8 = pick(case, 1, "req_per_s"), pick(case, max(CONCURRENCY), "req_per_s")
        print(
            f"{case}: TTFT p50 c1 {ttft:.1f} ms (floor {floor_ttft:.1f}, {ttft - floor_ttft:+.1f} ms); workers' CLI CPU"
            f" per request {cpu:.1f} ms (floor {floor_cpu:.1f}, {cpu / floor_cpu:.2f}x); scaling at c{max(CONCURRENCY)}"
            f" {c8 / (max(CONCURRENCY) * single):.2f} ({c8:.2f} of {max(CONCURRENCY) * single:.2f} req/s)"
        )
    for c in CONCURRENCY:
        cold, warm = "direct cold CLI", "maxproxy stream"
        ttft = pick(warm, c, "ttft_p50_ms") / pick(cold, c, "ttft_p50_ms")
        rate = pick(warm, c, "req_per_s") / pick(cold, c, "req_per_s")
        cpu = pick(warm, c, "cpu_s_per_req") / pick(cold, c, "cpu_s_per_req")
        chunk = pick(warm, c, "proxy_cpu_ms_per_chunk") / pick(warm, c, "cli_cpu_ms_per_chunk")
        print(
            f"concurrency {c}: maxproxy/cold-CLI TTFT p50 {ttft:.2f}x, throughput {rate:.2f}x, CPU/request {cpu:.2f}x;"
            f" proxy CPU per chunk = {100 * chunk:.1f}% of the CLI's"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m maxproxy.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=24, help="requests per case (default 24, at most 200)")
    parser.add_argument(
        "--turns",
        type=int,
        default=long_conversation.TURNS,
        help=f"turns of the long conversation (default {long_conversation.TURNS}, 2 to 40)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 requests per case and 6 turns")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--controls", action="store_true", help="only (e): the control requests per turn kind")
    only.add_argument("--long", action="store_true", help="only (f): the long conversation")
    args = parser.parse_args()
    requests, turns = (4, 6) if args.quick else (args.requests, args.turns)
    part = "controls" if args.controls else "long" if args.long else None
    asyncio.run(main(max(1, min(requests, 200)), only=part, turns=max(2, min(turns, 40))))
