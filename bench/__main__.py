"""`make bench`: latency of maxproxy against the direct cold CLI, both on the fake upstream (50 tokens x 10 ms).

Runs the fake Anthropic upstream and maxproxy (real pinned CLI) on loopback, then measures side by side:
(a) the direct cold CLI: one `claude -p` stream-json process per request, the floor of any spawn-per-request proxy;
(b) maxproxy: streaming time to first token and total, non-streaming latency, at concurrency 1 and 4.
CPU seconds are user+system of the benchmark's children (the CLI processes) per request. Timing goals live here,
never in the tests. Every request goes to 127.0.0.1; the loops are bounded in count.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web
from maxproxy import logs
from maxproxy.app import create_app
from maxproxy.claude import command
from maxproxy.settings import Settings
from tests.fakes.upstream import FakeUpstream, Reply, Text

TOKENS, DELAY = 50, 0.010
HELLO = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def direct_cli(settings: Settings) -> tuple[float, float]:
    """One cold `claude` process for one request: (time to first text delta, total)."""
    launch = command.Launch(model="sonnet")
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *command.argv(settings, launch),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=settings.workspace_path,
        env=command.environment(settings),
    )
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
    first = 0.0
    async for raw in proc.stdout:
        if not first and b'"text_delta"' in raw:
            first = time.perf_counter() - started
    await proc.wait()
    return first, time.perf_counter() - started


async def proxy_stream(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = 0.0
    async with http.post(url, json={**HELLO, "stream": True}) as response:
        assert response.status == 200
        async for raw in response.content:
            if not first and b'"content":"' in raw and b'"content":""' not in raw:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def proxy_complete(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    started = time.perf_counter()
    async with http.post(url, json=HELLO) as response:
        assert response.status == 200
        await response.read()
    total = time.perf_counter() - started
    return total, total


async def measure(
    name: str, run: Callable[[], Awaitable[tuple[float, float]]], requests: int, concurrency: int
) -> dict[str, float | str | int]:
    cpu_before = children_cpu()
    started = time.perf_counter()
    firsts: list[float] = []
    totals: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            first, total = await run()
        firsts.append(first)
        totals.append(total)

    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - started
    return {
        "case": name,
        "concurrency": concurrency,
        "requests": requests,
        "ttft_p50_ms": round(statistics.median(firsts) * 1000, 1),
        "ttft_p95_ms": round(percentile(firsts, 95) * 1000, 1),
        "total_p50_ms": round(statistics.median(totals) * 1000, 1),
        "req_per_s": round(requests / wall, 2),
        "cli_cpu_s_per_req": round((children_cpu() - cpu_before) / requests, 3),
    }


async def main(requests: int) -> None:
    upstream = FakeUpstream(default=Reply(blocks=(Text(tuple(f"tok{i} " for i in range(TOKENS))),), delay=DELAY))
    await upstream.start()
    home = Path(tempfile.mkdtemp(prefix="maxproxy-bench-"))
    os.environ.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=upstream.url,
        CLAUDE_CODE_OAUTH_TOKEN="bench",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    os.environ.pop("ANTHROPIC_API_KEY", None)
    settings = msgspec.convert({"state_dir": str(home / "state"), "upstream_retries": 0}, Settings)
    settings.workspace_path.mkdir(parents=True, exist_ok=True)
    runner = web.AppRunner(create_app(settings), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    rows = []
    try:
        async with aiohttp.ClientSession() as http:
            await proxy_complete(http, url)  # warm-up
            for concurrency in (1, 4):
                rows.append(await measure("direct cold CLI", lambda: direct_cli(settings), requests, concurrency))
                rows.append(await measure("maxproxy stream", lambda: proxy_stream(http, url), requests, concurrency))
                rows.append(
                    await measure("maxproxy non-stream", lambda: proxy_complete(http, url), requests, concurrency)
                )
    finally:
        await runner.cleanup()
        await upstream.close()
    columns = list(rows[0])
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    for concurrency in (1, 4):
        cold, stream = (
            next(r for r in rows if r["case"] == case and r["concurrency"] == concurrency)
            for case in ("direct cold CLI", "maxproxy stream")
        )
        ratio = float(stream["ttft_p50_ms"]) / float(cold["ttft_p50_ms"])
        print(f"concurrency {concurrency}: maxproxy/cold-CLI TTFT p50 ratio {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20, help="requests per case (bounded)")
    args = parser.parse_args()
    logs.configure("warning", "json")
    asyncio.run(main(min(args.requests, 200)))
