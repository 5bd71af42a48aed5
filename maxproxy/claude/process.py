"""One child process and its pipes, apart from what is spoken over them: `Process` starts a program (exec, never a
shell, in its own process group so that signals reach it and whatever it starts together), hands each stdout line to
a callback as it arrives (no reader task, no extra hop per line), keeps the tail of its stderr for the message that
explains its exit, writes to its stdin with flow control, reads its memory and CPU from /proc, and stops it with a
bounded ladder — stdin EOF, then SIGTERM, then SIGKILL to the whole group, the child always reaped. It knows nothing
of the CLI's protocol; its owner (the worker) decodes the lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from maxproxy import errors
from maxproxy.claude.events import ProtocolError

# The worker's logger: a process's events read as its worker's, under the one name whose level operators set.
log = structlog.get_logger("maxproxy.worker")

# Lines can be far larger than asyncio's 64 KiB stream default (tool results, image echoes, `initialize` answers).
LINE_LIMIT = 256 * 1024 * 1024


class Pipes(asyncio.SubprocessProtocol):
    """The process's pipes: stdout split into lines, each given to `on_line` as it arrives; stderr lines to
    `on_stderr`; `on_end` called once, when stdout ends (None) or a line outgrows `LINE_LIMIT` (the error); stdin flow
    control; and the exit."""

    def __init__(
        self,
        on_line: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        on_end: Callable[[ProtocolError | None], None],
    ) -> None:
        self._on_line = on_line
        self._on_stderr = on_stderr
        self._on_end = on_end
        self._out = bytearray()
        self._err = bytearray()
        self.ignoring = False  # stdout is done with: what else comes is dropped unread
        self._ended = False
        self._paused: asyncio.Future[None] | None = None
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stderr_closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self._out if fd == 1 else self._err
        if fd == 1 and self.ignoring:
            buffer.clear()
            return
        start = len(buffer)
        buffer += data
        if len(buffer) > LINE_LIMIT:
            buffer.clear()
            if fd == 1:
                self.ignoring = True
                self._end(ProtocolError("an output line beyond the line limit"))
            return
        end = buffer.find(b"\n", start)
        if end < 0:
            return
        cut = buffer.rfind(b"\n") + 1
        lines = bytes(buffer[:cut]).split(b"\n")[:-1]
        del buffer[:cut]
        deliver = self._on_line if fd == 1 else self._on_stderr
        for line in lines:
            deliver(line)

    def _end(self, error: ProtocolError | None) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(error)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._end(None)
        elif fd == 2 and not self.stderr_closed.done():
            self.stderr_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def pause_writing(self) -> None:
        if self._paused is None:
            self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    async def drain(self) -> None:
        if self._paused is not None:
            await asyncio.shield(self._paused)


class Process:
    """A child process, started by `spawn`. When it is stopped, `farewell` may give a last word to await first,
    bounded by a ladder step (the worker interrupts a running turn, so the CLI stops spending before it exits), or None
    for nothing to say; `on_stopped` runs once the process is reaped."""

    def __init__(
        self,
        name: str,
        *,
        stop_step_timeout: float,
        on_line: Callable[[bytes], None],
        on_end: Callable[[ProtocolError | None], None],
        farewell: Callable[[], Awaitable[None] | None] | None = None,
        on_stopped: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.pid = 0  # set by `spawn`
        self.stop_step_timeout = stop_step_timeout
        self._on_line = on_line
        self._on_end = on_end
        self._farewell = farewell
        self._on_stopped = on_stopped
        self._transport: asyncio.SubprocessTransport | None = None
        self._pipes: Pipes | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._write_lock = asyncio.Lock()
        self._closing: asyncio.Task[None] | None = None

    async def spawn(
        self, argv: Sequence[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None
    ) -> None:
        """Start the program; OSError (not found, not executable, no such directory) if it cannot be."""
        loop = asyncio.get_running_loop()
        transport, pipes = await loop.subprocess_exec(
            lambda: Pipes(self._on_line, self._on_stderr_line, self._on_end),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: signals reach the CLI and its tools together
        )
        self._transport, self._pipes = transport, pipes
        self.pid = transport.get_pid()

    @property
    def exited(self) -> asyncio.Future[None]:
        """Done when the process has exited (and been reaped)."""
        assert self._pipes is not None
        return self._pipes.exited

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode() if self._transport is not None else None

    @property
    def alive(self) -> bool:
        return self._transport is not None and self.returncode is None

    def ignore_output(self) -> None:
        """Drop whatever stdout still brings unread (its owner will not use it); `on_end` still comes at its end."""
        if self._pipes is not None:
            self._pipes.ignoring = True

    # --- stdin ---------------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write without waiting (flow control is `send`'s); CLIFailed if the process no longer reads its input."""
        stdin = self._transport.get_pipe_transport(0) if self._transport is not None else None
        if stdin is None or stdin.is_closing() or self.returncode is not None:
            raise errors.CLIFailed(self.exit_message("before it read its input"))
        stdin.write(data)  # type: ignore[attr-defined]

    async def send(self, data: bytes) -> None:
        """Write, then wait while the pipe is full; one sender at a time, so a second waits for the first's drain."""
        assert self._pipes is not None
        async with self._write_lock:
            self.write(data)
            await self._pipes.drain()

    # --- what it is doing ----------------------------------------------------------------------------------------

    def rss_bytes(self) -> int:
        """Resident memory of the process (Linux; 0 where /proc is not available)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def cpu_ns(self) -> int:
        """CPU time of the process's main (for the CLI: JavaScript) thread so far, to the nanosecond (Linux; 0 where
        /proc is not available). Not all threads: the process's total comes in 10 ms ticks, and summing its threads'
        counters goes backwards when one exits (measured: the CLI's helper threads come and go while it idles)."""
        try:
            return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def _on_stderr_line(self, line: bytes) -> None:
        text = line.decode(errors="replace").strip()
        if text:
            self._stderr.append(text[:300])
            log.info("cli_stderr", worker=self.name, line=text[:300])

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr)[-400:]

    def exit_message(self, when: str) -> str:
        code = self.returncode
        tail = self.stderr_tail()
        return (
            f"The Claude Code CLI exited {when}"
            + (f" (code {code})" if code is not None else "")
            + (f": {tail}" if tail else "")
        )

    async def wait_exit(self) -> None:
        """stdout closed: the exit code and stderr are moments away; wait briefly so the exit message can carry them."""
        if self._pipes is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pipes.exited), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pipes.stderr_closed), 0.5)

    # --- stopping ------------------------------------------------------------------------------------------------

    def stop(self) -> asyncio.Task[None]:
        """Start stopping the process; the task reaps it. Idempotent."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"{self.name}-close")
        return self._closing

    async def close(self) -> None:
        """Stop and reap the process. A cancelled caller does not cancel the stop: its owner awaits it later."""
        await asyncio.shield(self.stop())

    async def reap(self) -> None:
        """Stop and reap the process before returning, even if cancelled meanwhile (the stop ladder is bounded); the
        cancellation is raised once the process is gone. A start that is cancelled thus ends only when its process
        has, so whoever counts processes by their starts never counts a live one as gone."""
        task = self.stop()
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _close(self) -> None:
        transport, pipes = self._transport, self._pipes
        if transport is None or pipes is None:
            return  # never started: nothing to stop (and pid 0 would signal our own group)
        step = self.stop_step_timeout
        if self.returncode is None and self._farewell is not None and (last := self._farewell()) is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(last, step)
        stdin = transport.get_pipe_transport(0)
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        how = "eof"
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                how = sig.name
                self._signal_group(sig)
            try:
                await asyncio.wait_for(asyncio.shield(pipes.exited), step)
                break
            except TimeoutError:
                continue
        else:
            log.error("worker_unreaped", worker=self.name, pid=self.pid)
        # Whatever the process started (the CLI's tool subprocesses) goes with it.
        self._signal_group(signal.SIGKILL)
        transport.close()
        if self._on_stopped is not None:
            self._on_stopped()
        log.debug("worker_stopped", worker=self.name, pid=self.pid, returncode=self.returncode, how=how)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
