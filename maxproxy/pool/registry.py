"""The pid registry: each worker's pid is recorded under the state directory (`<state>/workers/<pid>`, holding the
process's kernel start time) while it runs, so that a later maxproxy kills the process groups a crashed one left
behind. The start time makes the record name one process even after its pid was reused."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import structlog

log = structlog.get_logger("maxproxy.pool")


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / str(pid)).write_text(start_time(pid))

    def unregister(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            (self.path / str(pid)).unlink()

    def sweep(self) -> None:
        """Kill the process groups of workers a previous maxproxy recorded and never reaped (it crashed)."""
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            with contextlib.suppress(OSError, ValueError):
                pid = int(entry.name)
                recorded = entry.read_text()
                # pid and kernel start time together name exactly the process that was recorded, even after reuse.
                if recorded and recorded == start_time(pid):
                    os.killpg(pid, signal.SIGKILL)
                    log.warning("leftover_worker_killed", pid=pid)
            with contextlib.suppress(OSError):
                entry.unlink()


def start_time(pid: int) -> str:
    """The kernel's start time of a process: with the pid, it names one process even after pid reuse."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return raw[raw.rfind(")") + 2 :].split()[19]
