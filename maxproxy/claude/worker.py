"""A `Worker` owns one `claude -p --input-format stream-json` process: it starts it (exec, never a shell, in its own
process group), readies it (`initialize`), writes input lines to its stdin, reads and decodes its stdout, answers
control requests, runs turns under an inactivity watchdog and a hard cap, interrupts them, rewinds the conversation
to nothing so the process can serve an unrelated one, and stops it: stdin EOF, then SIGTERM, then SIGKILL to the
whole group, each step bounded, the child always reaped. The worker decides nothing about policy; its owner (the
pool) does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from maxproxy import errors
from maxproxy.claude import command
from maxproxy.claude.events import ControlRequest, ControlResponse, Event, ProtocolError, Result, decode, encode_line
from maxproxy.settings import Settings

log = structlog.get_logger("maxproxy.worker")

# Lines can be far larger than asyncio's 64 KiB default (tool results, image echoes, `initialize` answers).
LINE_LIMIT = 256 * 1024 * 1024
START_TIMEOUT = 30.0
CONTROL_TIMEOUT = 10.0
_ids = itertools.count(1)


class _End:
    """Sentinel put on the event queue when stdout ends or turns to garbage."""

    def __init__(self, error: ProtocolError | None = None) -> None:
        self.error = error


class Watchdog:
    """Per-turn time limits: no CLI output for `inactivity` seconds, or the whole turn past `cap` seconds."""

    def __init__(self, inactivity: float, cap: float) -> None:
        self.inactivity = inactivity
        self.deadline = time.monotonic() + cap
        self.cap = cap


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process, settings: Settings, launch: command.Launch | None) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.launch = launch
        self.settings = settings
        self.name = f"w{next(_ids)}"
        self.turns = 0
        self.in_turn = False
        self.broken = False  # stdout ended or broke protocol: never reuse
        self.interrupted = False  # maxproxy interrupted the current turn on purpose
        self.last_result: Result | None = None
        self.last_activity = time.monotonic()
        self.idle_since = time.monotonic()
        self.tap: Callable[[Event], None] | None = None  # sees every turn event (the pool's event bus)
        self._options = command.Options()
        self._rewind_to: str | None = None  # uuid of the conversation's first prompt: rewinding to it empties it
        self._seen_output = False
        self._queue: asyncio.Queue[Event | _End] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._write_lock = asyncio.Lock()
        self._request_ids = itertools.count(1)
        self._readers = [
            asyncio.create_task(self._read_stdout(), name=f"{self.name}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{self.name}-stderr"),
        ]
        self._closing: asyncio.Task[None] | None = None
        self.info: dict[str, Any] = {}  # the `initialize` answer: version, account, models, ...

    # --- life cycle ------------------------------------------------------------------------------------------------

    @classmethod
    async def start(cls, settings: Settings, launch: command.Launch | None = None) -> Worker:
        """Start a process and wait until it answers `initialize` (which also fixes its system prompt, if any)."""
        workspace = settings.workspace_path
        try:
            workspace.mkdir(parents=True, exist_ok=True)
            proc = await asyncio.create_subprocess_exec(
                *command.argv(settings, launch),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workspace,
                env=command.environment(settings),
                start_new_session=True,  # its own process group: signals reach the CLI and its tools together
                limit=LINE_LIMIT,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise errors.CLIUnavailable(
                f"Cannot start the Claude Code CLI at {settings.cli_path!r} ({exc.strerror}). "
                "Run `make install`, or set MAXPROXY_CLAUDE_PATH to the `claude` executable."
            ) from None
        worker = cls(proc, settings, launch)
        log.debug("worker_started", worker=worker.name, pid=worker.pid, model=launch.model if launch else None)
        try:
            fields = command.initialize_request(settings, launch)
            worker.info = await worker.control("initialize", timeout=START_TIMEOUT, **fields)
        except errors.ProxyError:
            await worker._wait_exit()
            await worker.close()
            raise errors.CLIUnavailable(worker._exit_message("at start-up")) from None
        except BaseException:
            await worker.close()
            raise
        return worker

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.broken

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr)[-400:]

    def rss_bytes(self) -> int:
        """Resident memory of the CLI process (Linux; 0 where /proc is not available)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def stop(self) -> asyncio.Task[None]:
        """Start stopping the process (interrupting a running turn first); the task reaps it. Idempotent."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"{self.name}-close")
        return self._closing

    async def close(self) -> None:
        """Stop and reap the process. A cancelled caller does not cancel the stop: its owner awaits it later."""
        await asyncio.shield(self.stop())

    async def _close(self) -> None:
        step = self.settings.stop_step_timeout
        if self.proc.returncode is None and self.in_turn and not self.broken:
            # An interrupt ends the turn in ~20 ms, so the CLI stops spending before it exits.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send_interrupt(), step)
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        how = "eof"
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                how = sig.name
                self._signal_group(sig)
            try:
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), step)
                break
            except TimeoutError:
                continue
        else:
            log.error("worker_unreaped", worker=self.name, pid=self.pid)
        # Whatever the CLI started (tool subprocesses) goes with it.
        self._signal_group(signal.SIGKILL)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._fail_pending("The CLI exited before answering a control request")
        log.debug("worker_stopped", worker=self.name, pid=self.pid, returncode=self.proc.returncode, how=how)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(errors.CLIFailed(message))

    # --- I/O -----------------------------------------------------------------------------------------------------

    async def send(self, line: dict[str, Any]) -> None:
        data = encode_line(line)
        stdin = self.proc.stdin
        assert stdin is not None
        async with self._write_lock:
            try:
                stdin.write(data)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                self.broken = True
                raise errors.CLIFailed(self._exit_message("before it read its input")) from None

    async def control(self, subtype: str, *, timeout: float = CONTROL_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Send a control request and wait for its response."""
        request_id = f"req_{next(self._request_ids)}_{self.name}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            request = {"subtype": subtype, **fields}
            await self.send({"type": "control_request", "request_id": request_id, "request": request})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise errors.CLIFailed(f"The CLI did not answer the {subtype} control request in {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)

    async def _send_interrupt(self) -> None:
        request_id = f"req_{next(self._request_ids)}_{self.name}"
        await self.send({"type": "control_request", "request_id": request_id, "request": {"subtype": "interrupt"}})

    async def interrupt(self) -> None:
        """Ask the CLI to end the running turn now; its `result` follows within milliseconds."""
        if self.alive and self.in_turn and not self.interrupted:
            self.interrupted = True
            await self._send_interrupt()

    async def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        end = _End()
        try:
            while line := await stdout.readline():
                self.last_activity = time.monotonic()
                if not line.strip():
                    continue
                event = decode(line)
                if event is None:
                    continue
                self._seen_output = True
                if isinstance(event, ControlResponse):
                    future = self._pending.get(event.response.request_id)
                    if future is not None and not future.done():
                        if event.response.subtype == "success":
                            future.set_result(event.response.response or {})
                        else:
                            future.set_exception(
                                errors.CLIFailed(f"CLI control request failed: {event.response.error}")
                            )
                elif isinstance(event, ControlRequest):
                    await self._refuse(event)
                else:
                    self._queue.put_nowait(event)
        except ProtocolError as exc:
            end = _End(exc)
        except ValueError as exc:  # a line beyond LINE_LIMIT
            end = _End(ProtocolError(str(exc)))
        finally:
            self.broken = True
            self._queue.put_nowait(end)
            self._fail_pending("The CLI closed its output before answering")

    async def _refuse(self, request: ControlRequest) -> None:
        # maxproxy registers no hooks, MCP servers or permission prompts, so the CLI should never ask; if it does,
        # answer at once rather than leave it waiting forever.
        log.warning("cli_control_request_refused", worker=self.name, subtype=request.request.subtype)
        with contextlib.suppress(errors.ProxyError):
            await self.send(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "error",
                        "request_id": request.request_id,
                        "error": f"maxproxy does not handle {request.request.subtype}",
                    },
                }
            )

    async def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        while line := await stderr.readline():
            text = line.decode(errors="replace").strip()
            if text:
                self._stderr.append(text[:300])
                log.info("cli_stderr", worker=self.name, line=text[:300])

    def _exit_message(self, when: str) -> str:
        code = self.proc.returncode
        tail = self.stderr_tail()
        return (
            f"The Claude Code CLI exited {when}"
            + (f" (code {code})" if code is not None else "")
            + (f": {tail}" if tail else "")
        )

    # --- turns ---------------------------------------------------------------------------------------------------

    async def next_event(self, watchdog: Watchdog, tick: float | None = None) -> Event | None:
        """The next turn event; None when `tick` seconds pass without one (callers use it for keepalives)."""
        started = time.monotonic()
        while True:
            now = time.monotonic()
            limit = min(self.last_activity + watchdog.inactivity, watchdog.deadline)
            if tick is not None and now - started >= tick and now < limit:
                return None
            if now >= limit:
                if now >= watchdog.deadline:
                    raise errors.Timeout(f"The turn ran past the {watchdog.cap:g}s limit", code="turn_timeout")
                raise errors.Timeout(
                    f"The Claude Code CLI was silent for {watchdog.inactivity:g}s", code="cli_inactivity_timeout"
                )
            wait = limit - now if tick is None else min(limit - now, started + tick - now)
            try:
                item = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                continue  # re-check: output may have arrived that is not a turn event
            if isinstance(item, _End):
                self._queue.put_nowait(item)  # every later read sees the end too
                await self._wait_exit()
                if item.error is not None:
                    raise errors.CLIFailed(f"The Claude Code CLI broke its output protocol: {item.error}")
                if not self._seen_output:
                    raise errors.CLIUnavailable(self._exit_message("at start-up"))
                raise errors.CLIFailed(self._exit_message("in the middle of a turn"))
            return item

    async def _wait_exit(self) -> None:
        # stdout closed: the exit code and stderr are moments away; wait briefly so the message can carry them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._readers[1]), 0.5)

    async def apply(self, options: command.Options) -> None:
        """Per-turn settings (output limit, effort), sent only when they differ from the last ones."""
        if options != self._options:
            await self.control("apply_flag_settings", settings=options.flag_settings())
            self._options = options

    async def turn(
        self, lines: Sequence[dict[str, Any]], watchdog: Watchdog, *, tick: float | None = None
    ) -> AsyncGenerator[Event | None, None]:
        """Write one turn's input and yield its events up to and including its `Result` (and None after every
        `tick` seconds without an event).

        `lines` replays earlier history (user lines with `shouldQuery: false`, assistant lines) and ends with the
        querying user line. Each non-querying user line is answered by its own `result` before the next line may be
        written: the CLI queues user lines but appends assistant lines at once, so written back-to-back the history
        would reach the model out of order (protocol note §5.1).
        """
        # `in_turn` stays set if the consumer stops early, so that the owner interrupts the turn.
        self.in_turn = True
        self.interrupted = False
        self.last_result = None
        self.turns += 1
        for n, line in enumerate(lines):
            if n == 0 and self._rewind_to is None and line.get("type") == "user":
                # The conversation's first prompt gets an id: rewinding to it later empties the conversation without a
                # trace (a `/clear` leaves its own caveat text on the next prompt).
                line = {**line, "uuid": str(uuid.uuid4())}
                if line.get("shouldQuery") is not False:
                    self._rewind_to = line["uuid"]
                else:
                    self._rewind_to = ""  # a replayed history cannot be rewound (see `resettable`)
            await self.send(line)
            if line.get("type") == "user" and line.get("shouldQuery") is False:
                while not isinstance(await self.next_event(watchdog), Result):
                    pass
        while True:
            event = await self.next_event(watchdog, tick)
            if event is not None and self.tap is not None:
                self.tap(event)
            if isinstance(event, Result):
                self.in_turn = False
                self.last_result = event
                yield event
                return
            yield event

    async def finish(self, timeout: float) -> None:
        """End a turn that its consumer left: interrupt it and read its remaining events up to the `Result`."""
        await self.interrupt()
        watchdog = Watchdog(timeout, timeout)
        while self.in_turn:
            event = await self.next_event(watchdog)
            if event is not None and self.tap is not None:
                self.tap(event)
            if isinstance(event, Result):
                self.in_turn = False
                self.last_result = event

    @property
    def resettable(self) -> bool:
        """Whether `reset` can empty the conversation. Measured: rewinding to the first prompt leaves nothing, but a
        conversation that began with replayed history (`shouldQuery: false` lines) cannot be rewound, and `/clear`
        leaves a `<local-command-caveat>` block on every later conversation of the process."""
        return self._rewind_to != ""

    async def reset(self) -> bool:
        """Empty the conversation so that the next turn starts from nothing; False if that cannot be done."""
        target, self._rewind_to = self._rewind_to, None
        if target is None:
            return True  # no turn since the last reset
        if not target:
            return False
        answer = await self.control("rewind_conversation", target_message_uuid=target)
        if not answer.get("rewound"):
            log.warning("worker_rewind_failed", worker=self.name, reason=answer.get("reason"))
            return False
        return True
