"""`Process` alone, with a real tiny child (this Python): stdout lines far past asyncio's 64 KiB default arrive whole,
a line past the limit ends the stream with a protocol error, a child that ignores SIGTERM is killed and reaped within
the stop ladder together with what it started, and `stop()` is idempotent."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog
from maxproxy import errors
from maxproxy.claude import process as process_module
from maxproxy.claude.events import ProtocolError
from maxproxy.claude.process import Process

from tests.conftest import wait_for
from tests.procs import alive, in_group

STEP = 0.3  # each rung of the stop ladder


class Child:
    """A `Process` running `python -c code`, with what its callbacks saw."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.ends: list[ProtocolError | None] = []
        self.ended = asyncio.Event()
        self.process = Process(
            "t", stop_step_timeout=STEP, on_line=self.lines.append, on_end=self._end, on_stopped=self._stopped
        )
        self.stopped = 0

    def _end(self, error: ProtocolError | None) -> None:
        self.ends.append(error)
        self.ended.set()

    def _stopped(self) -> None:
        self.stopped += 1


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[[str], Awaitable[Child]]]:
    children: list[Child] = []

    async def start(code: str) -> Child:
        child = Child()
        children.append(child)
        await child.process.spawn([sys.executable, "-c", code])
        return child

    yield start
    for child in children:
        await child.process.close()  # every child reaped, whatever the test did


async def test_lines_past_64_kib_arrive_whole(spawn: Callable[[str], Awaitable[Child]]) -> None:
    code = "import sys; sys.stdout.write('a' * 200_000 + '\\n' + 'b' * 70_000 + '\\n\\nlast\\n')"
    child = await spawn(code)
    await child.ended.wait()
    assert child.lines == [b"a" * 200_000, b"b" * 70_000, b"", b"last"]
    assert child.ends == [None]  # stdout ended, once, without an error


async def test_a_line_past_the_limit_ends_the_stream_with_a_protocol_error(
    spawn: Callable[[str], Awaitable[Child]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process_module, "LINE_LIMIT", 1 << 20)  # 256 MiB would only make the test slow
    code = "import sys; sys.stdout.write('ok\\n' + 'x' * (3 << 20)); sys.stdout.flush(); sys.stdin.read()"
    child = await spawn(code)
    await child.ended.wait()
    assert child.lines == [b"ok"]
    [error] = child.ends
    assert isinstance(error, ProtocolError)
    assert child.process.alive  # the owner decides what to do with it: here, stop it
    await child.process.stop()
    assert child.ends == [error]  # the end is reported once, not again when stdout closes
    assert child.process.returncode == 0  # stdin EOF was enough


async def test_a_child_that_ignores_sigterm_is_killed_and_reaped_within_the_ladder(
    spawn: Callable[[str], Awaitable[Child]],
) -> None:
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(grandchild.pid, flush=True)\n"
        "sys.stdin.read()\n"  # stdin EOF is not enough either
        "time.sleep(60)\n"
    )
    child = await spawn(code)
    await wait_for(lambda: bool(child.lines))  # SIGTERM is ignored from here on
    grandchild = int(child.lines[0])
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(child.process.stop(), 3 * STEP + 5)  # three bounded rungs, then the reaping
    assert child.process.exited.done()
    assert child.process.returncode == -signal.SIGKILL
    [stopped] = [log for log in logs if log["event"] == "worker_stopped"]
    assert stopped["how"] == "SIGKILL"
    assert child.stopped == 1
    # The grandchild shared the child's group: the group SIGKILL took it too (its new parent reaps it).
    await wait_for(lambda: not alive(grandchild) and not in_group(child.process.pid))


async def test_stop_is_idempotent(spawn: Callable[[str], Awaitable[Child]]) -> None:
    child = await spawn("import sys; sys.stdin.read()")
    task = child.process.stop()
    assert child.process.stop() is task
    await child.process.close()
    await task
    assert child.process.stop() is task
    assert task.done()
    assert child.process.returncode == 0
    assert child.stopped == 1
    with pytest.raises(errors.CLIFailed, match="before it read its input"):
        child.process.write(b"late\n")
