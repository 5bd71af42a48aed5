"""`python -m maxproxy.bench.interleaved [rounds]`: maxproxy against the floor, taken in turn. Two warm CLIs fed
directly (`floor.Fleet`) and maxproxy with two workers answer one streamed request each round — the floor, then chat,
Responses and Messages, the order rotated every round — so that the machine's drift lands on all of them alike,
which whole-case runs on a busy 2-core machine cannot promise. Prints the median time to first token, its quartiles,
and the mean CLI CPU per request (every CLI of each side counted, idle ones too). Every request goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from maxproxy.bench import __main__ as bench
from maxproxy.bench.daemon import daemon
from maxproxy.bench.floor import Fleet
from maxproxy.bench.procfs import settle
from maxproxy.bench.upstream import FakeUpstream, Reply, Text
from maxproxy.claude import command
from maxproxy.settings import Settings

WORKERS = 2
WARM_ROUNDS = 6


async def main(rounds: int) -> None:
    upstream = FakeUpstream(
        default=Reply(blocks=(Text(tuple(f"tok{i} " for i in range(bench.TOKENS))),), delay=bench.DELAY)
    )
    await upstream.start()
    home = Path(tempfile.mkdtemp(prefix="maxproxy-interleaved-"))
    env = bench.environment(upstream.url, home, WORKERS)
    fleet = await Fleet.start(Settings(state_dir=str(home / "floor")), command.Launch(model="sonnet"), WORKERS)
    ttft: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        async with daemon(env) as (proc, url, _), aiohttp.ClientSession() as http:
            server = bench.Server(proc.pid, f"{url}/v1/chat/completions")
            await bench.wait_warm(server, WORKERS)
            runs: dict[str, tuple[Callable[[], Awaitable[tuple[float, float, int]]], bench.Meter]] = {
                "floor": (fleet.turn, fleet),
                "chat": (lambda: bench.proxy_stream(http, f"{url}/v1/chat/completions"), server),
                "responses": (lambda: bench.responses_stream(http, f"{url}/v1/responses"), server),
                "messages": (lambda: bench.messages_stream(http, f"{url}/v1/messages"), server),
            }
            for _ in range(WARM_ROUNDS):
                for run, _meter in runs.values():
                    await run()
            await settle(lambda: fleet.pids() + server.pids(), maximum=30)
            names = list(runs)
            for i in range(rounds):
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    run, meter = runs[name]
                    before = meter.cpu()[1]
                    first, _, _ = await run()
                    cpu.setdefault(name, []).append((meter.cpu()[1] - before) * 1000)
                    ttft.setdefault(name, []).append(first * 1000)
            proc.terminate()
            await proc.wait()
    finally:
        await fleet.close()
        await upstream.close()
    report(ttft, cpu)


def report(ttft: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    floor_ttft, floor_cpu = statistics.median(ttft["floor"]), statistics.mean(cpu["floor"])
    print("| side | n | TTFT p50 ms | quartiles ms | vs floor ms | CLI CPU per request ms | vs floor |")
    print("|---|---|---|---|---|---|---|")
    for name, values in ttft.items():
        median, spent = statistics.median(values), statistics.mean(cpu[name])
        low, _, high = statistics.quantiles(values, n=4)
        print(
            f"| {name} | {len(values)} | {median:.1f} | {low:.1f}-{high:.1f} | {median - floor_ttft:+.1f}"
            f" | {spent:.1f} | {spent / floor_cpu:.2f}x |"
        )


if __name__ == "__main__":
    asyncio.run(main(max(4, min(int(sys.argv[1]) if len(sys.argv) > 1 else 40, 200))))
