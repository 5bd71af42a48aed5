"""What the runtime's knobs do to a warm CLI worker, measured side by side: for each variant (the baseline, one
environment variable of the Bun runtime, its allocator or the CLI, or one CLI flag) a few warm CLIs are started exactly
as maxproxy starts its workers (`bench.floor`), given warm-up turns, then timed turns against the fake upstream (50
tokens x 10 ms); then they are left idle and their CPU is read over two windows (just after the turns, and later, once
the runtime's idle timers have settled), with their memory right after the turns and after the idle time, and which of
their threads the idle CPU went to. Variants are interleaved over rounds (A B ... B A) because the 2-core machine is
shared; medians and ranges are reported. Run with `python -m maxproxy.bench.runtime [--workers N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from maxproxy.bench.floor import WarmCLI
from maxproxy.bench.upstream import FakeUpstream, Reply, Text
from maxproxy.claude import command
from maxproxy.settings import Settings

TOKENS, DELAY = 50, 0.010
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


# Each knob was found in the pinned CLI's binary (its strings) and in the Bun runtime's sources, not guessed.
VARIANTS = [
    Variant("baseline"),
    # Bun's low-memory mode (smaller JS heap, GC more often); a compiled binary takes runtime flags from BUN_OPTIONS.
    Variant("BUN_OPTIONS=--smol", {"BUN_OPTIONS": "--smol"}),
    # Bun's idle GC timer: a `collect_async()` every 1 s while the heap grows, every 30 s after 30 quiet ticks.
    Variant("BUN_GC_TIMER_DISABLE=1", {"BUN_GC_TIMER_DISABLE": "1"}),
    Variant("BUN_GC_TIMER_INTERVAL=5000", {"BUN_GC_TIMER_INTERVAL": "5000"}),
    # ... and the idle full collections after 10 s, 2 min and 10 min of quiet (to give memory back).
    # maxproxy's workers run with BUN_IDLE_GC_SECONDS=0 (`command.environment`, which every variant starts from):
    # this variant puts back the runtime's default, to price the choice again.
    Variant("BUN_IDLE_GC_SECONDS=bun-default", {"BUN_IDLE_GC_SECONDS": "10,110,480"}),
    Variant("BUN_IDLE_GC_SECONDS=0", {"BUN_IDLE_GC_SECONDS": "0"}),
    Variant("BUN_IDLE_GC_SECONDS=60", {"BUN_IDLE_GC_SECONDS": "60"}),
    Variant(
        "BUN_IDLE_GC_SECONDS=0 BUN_GC_TIMER_INTERVAL=5000",
        {"BUN_IDLE_GC_SECONDS": "0", "BUN_GC_TIMER_INTERVAL": "5000"},
    ),
    # mimalloc's delay before freed memory is returned to the OS (its `mi-scavenger` thread does it).
    Variant("MIMALLOC_PURGE_DELAY=0", {"MIMALLOC_PURGE_DELAY": "0"}),
    Variant("MIMALLOC_PURGE_DELAY=1000", {"MIMALLOC_PURGE_DELAY": "1000"}),
    # glibc malloc arenas (mimalloc does most allocation; glibc is still used by some native code).
    Variant("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"}),
    # The CLI polls ~/.claude.json with fs.watchFile every 1000 ms; on Linux this switch makes it an inotify watch
    # on the directory with a 60 s safety poll.
    Variant("CLAUDE_CODE_CONFIG_WATCH_EVENTS=1", {"CLAUDE_CODE_CONFIG_WATCH_EVENTS": "1"}),
    # JavaScriptCore's top JIT tier (one of the CLI's own listed runtime tuning variables).
    Variant("BUN_JSC_useFTLJIT=0", {"BUN_JSC_useFTLJIT": "0"}),
    Variant("--no-session-persistence", flags=("--no-session-persistence",)),
    Variant("--exclude-dynamic-system-prompt-sections", flags=("--exclude-dynamic-system-prompt-sections",)),
    Variant('--setting-sources ""', flags=("--setting-sources", "")),
]


def stat_of(pid: int | str, task: str | None = None) -> list[str]:
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    raw = Path(path).read_text()
    return [raw[raw.find("(") + 1 : raw.rfind(")")], *raw[raw.rfind(")") + 2 :].split()]


def cpu_of(pid: int) -> float:
    fields = stat_of(pid)
    return (int(fields[12]) + int(fields[13])) / TICKS


def threads_of(pid: int) -> dict[str, float]:
    """CPU seconds per live thread, keyed by thread name (threads of one name summed)."""
    out: dict[str, float] = defaultdict(float)
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            fields = stat_of(pid, task)
            out[fields[0]] += (int(fields[12]) + int(fields[13])) / TICKS
    return out


def memory_of(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and (from smaps_rollup) Pss, in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(value.split()[0]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "Pss":
            out[key] = int(value.split()[0]) / 1024
    return out


@contextlib.contextmanager
def patched_environ(extra: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def start(settings: Settings, variant: Variant) -> WarmCLI:
    """A warm CLI as `WarmCLI.start` makes one, with the variant's environment and flags added."""
    with patched_environ(variant.env):
        env = command.environment(settings)
    return await WarmCLI.start(settings, command.Launch(model="sonnet"), flags=variant.flags, env=env)


@dataclass
class Sample:
    """One variant's numbers from one round (lists: one entry per worker, or per turn for `ttft`)."""

    ttft: list[float] = field(default_factory=list)
    cpu_turn: list[float] = field(default_factory=list)
    rss_turns: list[float] = field(default_factory=list)
    rss_idle: list[float] = field(default_factory=list)
    anon_idle: list[float] = field(default_factory=list)
    pss_idle: list[float] = field(default_factory=list)
    idle_early: list[float] = field(default_factory=list)  # ms/s just after the turns
    idle_late: list[float] = field(default_factory=list)  # ms/s once settled
    threads_late: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # ms/s per worker


async def run(settings: Settings, variant: Variant, workers: int, turns: int, windows: tuple[float, float]) -> Sample:
    sample = Sample()
    clis: list[WarmCLI] = []
    try:
        for _ in range(workers):
            clis.append(await start(settings, variant))
        for cli in clis:
            for _ in range(3):  # a process's first turns are slower (measured)
                await cli.turn()
        for cli in clis:
            before = cpu_of(cli.proc.pid)
            for _ in range(turns):
                first, _, deltas = await cli.turn()
                assert deltas == TOKENS, deltas
                sample.ttft.append(first * 1000)
            sample.cpu_turn.append((cpu_of(cli.proc.pid) - before) * 1000 / turns)
        pids = [cli.proc.pid for cli in clis]
        sample.rss_turns = [memory_of(pid)["VmRSS"] for pid in pids]
        marks = [time.monotonic()]
        cpus = [[cpu_of(pid) for pid in pids]]
        await asyncio.sleep(windows[0])
        marks.append(time.monotonic())
        cpus.append([cpu_of(pid) for pid in pids])
        threads_before = [threads_of(pid) for pid in pids]
        await asyncio.sleep(windows[1])
        marks.append(time.monotonic())
        cpus.append([cpu_of(pid) for pid in pids])
        threads_after = [threads_of(pid) for pid in pids]
        for i in range(len(pids)):
            sample.idle_early.append((cpus[1][i] - cpus[0][i]) * 1000 / (marks[1] - marks[0]))
            sample.idle_late.append((cpus[2][i] - cpus[1][i]) * 1000 / (marks[2] - marks[1]))
            for name, seconds in threads_after[i].items():
                spent = seconds - threads_before[i].get(name, 0.0)
                sample.threads_late[name] += spent * 1000 / (marks[2] - marks[1]) / len(pids)
        for pid in pids:
            memory = memory_of(pid)
            sample.rss_idle.append(memory["VmRSS"])
            sample.anon_idle.append(memory["RssAnon"])
            sample.pss_idle.append(memory["Pss"])
    finally:
        for cli in clis:
            await cli.close()
    return sample


def summary(values: list[float], digits: int = 0) -> str:
    """Median [min-max]."""
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def report(variants: list[Variant], samples: dict[str, list[Sample]]) -> None:
    header = (
        "| variant | RSS after turns MB | RSS idle MB | RssAnon idle MB | PSS idle MB | idle CPU ms/s (just after)"
        " | idle CPU ms/s (settled) | TTFT p50 ms | CLI CPU ms/turn |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for variant in variants:
        rows = samples[variant.name]

        def every(name: str, rows: list[Sample] = rows) -> list[float]:
            return [value for sample in rows for value in getattr(sample, name)]

        p50s = [statistics.median(sample.ttft) for sample in rows]
        print(
            f"| {variant.name} | {summary(every('rss_turns'))} | {summary(every('rss_idle'))}"
            f" | {summary(every('anon_idle'))} | {summary(every('pss_idle'))} | {summary(every('idle_early'), 1)}"
            f" | {summary(every('idle_late'), 1)} | {summary(p50s, 1)} | {summary(every('cpu_turn'))} |"
        )
    print("\nsettled idle CPU per worker by thread (ms/s, mean over rounds):")
    for variant in variants:
        totals: dict[str, float] = defaultdict(float)
        for sample in samples[variant.name]:
            for name, value in sample.threads_late.items():
                totals[name] += value / len(samples[variant.name])
        busy = sorted(totals.items(), key=lambda item: -item[1])
        print(f"  {variant.name}: " + ", ".join(f"{name} {value:.1f}" for name, value in busy if value >= 0.05))


async def main_async(args: argparse.Namespace) -> None:
    chosen = [v for v in VARIANTS if not args.only or v.name in args.only.split(",")]
    upstream = FakeUpstream(default=Reply(blocks=(Text(tuple(f"tok{i} " for i in range(TOKENS))),), delay=DELAY))
    await upstream.start()
    home = Path(tempfile.mkdtemp(prefix="maxproxy-runtime-"))
    os.environ.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=upstream.url,
        CLAUDE_CODE_OAUTH_TOKEN="bench",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    os.environ.pop("ANTHROPIC_API_KEY", None)
    settings = msgspec.convert({"state_dir": str(home / "state"), "upstream_retries": 0}, Settings)
    settings.workspace_path.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[Sample]] = defaultdict(list)
    try:
        for round_ in range(args.rounds):
            order = chosen if round_ % 2 == 0 else chosen[::-1]
            for variant in order:
                sample = await run(settings, variant, args.workers, args.turns, (args.early, args.late))
                samples[variant.name].append(sample)
                print(
                    f"round {round_ + 1} {variant.name}: TTFT p50 {statistics.median(sample.ttft):.1f} ms, CPU/turn"
                    f" {statistics.median(sample.cpu_turn):.0f} ms, RSS idle {statistics.median(sample.rss_idle):.0f}"
                    f" MB, idle {statistics.median(sample.idle_early):.1f} / {statistics.median(sample.idle_late):.1f}"
                    " ms/s",
                    flush=True,
                )
    finally:
        await upstream.close()
    report(chosen, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="warm CLIs per variant")
    parser.add_argument("--turns", type=int, default=8, help="timed turns per CLI (after 3 warm-up turns)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the variants, alternating order")
    parser.add_argument("--early", type=float, default=20.0, help="seconds of the idle window just after the turns")
    parser.add_argument("--late", type=float, default=30.0, help="seconds of the settled idle window after it")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
