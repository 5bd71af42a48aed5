"""Process accounting for the bench, from /proc: a process's CPU (utime+stime in clock ticks, every thread, exited
ones too), its RSS, the children of a process (maxproxy's CLI workers), the CPU its live threads have run in
nanoseconds (`schedstat`, for short windows), and `settle`: wait until the workers' CPU has gone quiet — warm CLI
workers burn CPU in bursts for ~20 s after turns (measured), which would otherwise land on the next case.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2 :].split()


def cpu_of(pid: int, *, children: bool = False) -> float:
    """User+system seconds of a process (and, with `children`, of its reaped children); 0 once it is gone."""
    try:
        fields = stat(pid)
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def rss_of(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_of(pid: int) -> int:
    """Proportional set size: resident memory with pages shared between processes (the CLI's executable, mapped by
    every worker) split among them, so that a sum over workers counts them once."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
    return out


def run_ns(pid: int) -> int:
    """Nanoseconds on CPU of the process's live threads (`schedstat`: exact, where /proc/<pid>/stat counts 10 ms
    ticks); 0 once it is gone."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


async def settle(
    pids: Callable[[], Iterable[int]], *, quiet_ms_per_s: float = 10.0, window: float = 0.5, maximum: float = 30.0
) -> tuple[float, float]:
    """Wait until the processes `pids()` names (asked anew each window: workers come and go) ran less than
    `quiet_ms_per_s` of CPU per second each over one `window`, or `maximum` seconds passed. Returns (seconds
    waited, the last window's CPU in ms per second per process)."""
    started = time.perf_counter()
    rate = 0.0
    while True:
        before = {pid: run_ns(pid) for pid in pids()}
        since = time.perf_counter()
        await asyncio.sleep(window)
        elapsed = time.perf_counter() - since
        after = {pid: run_ns(pid) for pid in pids()}
        # A process that appeared or vanished in the window, or lost a thread (its count went down), is not quiet.
        steady = before.keys() == after.keys() and all(after[pid] >= before[pid] for pid in before)
        ran = sum(after[pid] - before.get(pid, 0) for pid in after)
        rate = ran / 1e6 / elapsed / max(1, len(after))
        waited = time.perf_counter() - started
        if (steady and rate < quiet_ms_per_s) or waited >= maximum:
            return waited, rate
