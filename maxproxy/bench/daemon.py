"""maxproxy as a real daemon process (`python -m maxproxy --port 0`), for tests and the benchmark: started, waited
for until it listens, and never left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


@contextlib.asynccontextmanager
async def daemon(env: dict[str, str]) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, list[dict[str, Any]]]]:
    """Yields (process, base URL, log records so far); the records list keeps filling until the process exits."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "maxproxy",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    records: list[dict[str, Any]] = []
    reader: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(60):
            while not records or records[-1]["event"] != "listening":
                raw = await proc.stdout.readline()
                if not raw:
                    stderr = await proc.stderr.read() if proc.stderr else b""
                    raise RuntimeError(f"maxproxy exited before it listened: {stderr.decode()[-500:]}")
                records.append(json.loads(raw))

        async def read_logs() -> None:
            assert proc.stdout is not None
            while raw := await proc.stdout.readline():
                records.append(json.loads(raw))

        reader = asyncio.create_task(read_logs())  # ends when the daemon's stdout closes
        yield proc, str(records[-1]["url"]), records
    finally:
        if proc.returncode is None:
            proc.kill()  # never leave a server (and its workers) behind
        await proc.wait()
        if reader is not None:
            await reader


def processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is inside `directory` (a daemon's CLI workers run in its workspace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(directory) in os.readlink(entry / "cwd"):
                    found.append(int(entry.name))
    return found
