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
import contextvars
import itertools
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from maxproxy import errors, tools
from maxproxy.claude import command
from maxproxy.claude.events import (
    ControlRequest,
    ControlResponse,
    ProtocolError,
    Result,
    TurnEvent,
    decode,
    encode_line,
)
from maxproxy.claude.mcp import RELIST_TIMEOUT, ToolHost
from maxproxy.settings import Settings

log = structlog.get_logger("maxproxy.worker")
_trace = logging.getLogger("maxproxy.worker")  # whether debug events are wanted: control requests are timed then

# Lines can be far larger than asyncio's 64 KiB stream default (tool results, image echoes, `initialize` answers).
LINE_LIMIT = 256 * 1024 * 1024
START_TIMEOUT = 30.0
CONTROL_TIMEOUT = 10.0
_ids = itertools.count(1)


def _control_name(subtype: str, fields: dict[str, Any]) -> str:
    """A control request's name in counts and logs: an `mcp_message` by the JSON-RPC method it carries."""
    message = fields.get("message")
    if subtype == "mcp_message" and isinstance(message, dict):
        return f"mcp_message:{message.get('method') or 'response'}"
    return subtype


class _End:
    """Sentinel put on the event queue when stdout ends or turns to garbage."""

    def __init__(self, error: ProtocolError | None = None) -> None:
        self.error = error


class _Tick:
    """Sentinel: the watched turn has been silent for a keepalive interval."""

    def __init__(self, watch: int) -> None:
        self.watch = watch


class _Expired:
    """Sentinel: the watched turn passed its inactivity limit or hard cap."""

    def __init__(self, watch: int, error: errors.Timeout) -> None:
        self.watch = watch
        self.error = error


class Watchdog:
    """Per-turn time limits: no CLI output for `inactivity` seconds, or the whole turn past `cap` seconds."""

    def __init__(self, inactivity: float, cap: float) -> None:
        self.inactivity = inactivity
        self.deadline = time.monotonic() + cap
        self.cap = cap


class _Pipes(asyncio.SubprocessProtocol):
    """The process's pipes: stdout split into lines and decoded as they arrive (no reader task, no extra hop per
    line), stderr kept for diagnostics, stdin flow control, and the exit."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self._out = bytearray()
        self._err = bytearray()
        self._paused: asyncio.Future[None] | None = None
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stderr_closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        worker = self.worker
        assert worker is not None
        buffer = self._out if fd == 1 else self._err
        if fd == 1 and worker.broken:
            buffer.clear()  # nothing more is read from a broken worker
            return
        start = len(buffer)
        buffer += data
        if len(buffer) > LINE_LIMIT:
            buffer.clear()
            if fd == 1:
                worker._on_end(ProtocolError("an output line beyond the line limit"))
            return
        end = buffer.find(b"\n", start)
        if end < 0:
            return
        cut = buffer.rfind(b"\n") + 1
        lines = bytes(buffer[:cut]).split(b"\n")[:-1]
        del buffer[:cut]
        for line in lines:
            if fd == 1:
                worker._on_line(line)
            else:
                worker._on_stderr(line)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self.worker is not None:
            self.worker._on_end(None)
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


class Worker:
    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        pipes: _Pipes,
        settings: Settings,
        launch: command.Launch | None,
        observe: Callable[[TurnEvent], None] | None = None,
    ) -> None:
        self.transport = transport
        self.pipes = pipes
        self.pid = transport.get_pid()
        self.launch = launch
        self.settings = settings
        self.name = f"w{next(_ids)}"
        self.turns = 0
        self.lines_written = 0  # conversation lines written in the last turn (a continuation writes only the new)
        self.in_turn = False
        self.broken = False  # stdout ended or broke protocol: never reuse
        self.interrupted = False  # maxproxy interrupted the current turn on purpose
        self.last_result: Result | None = None
        self.turn_cost = 0.0  # USD of the last turn: the CLI reports the process's running total in each result
        self._cost_total = 0.0
        self.last_activity = time.monotonic()
        self.idle_since = time.monotonic()
        self._observe = observe  # sees every turn event (its owner's way to the event bus)
        self.info: dict[str, Any] = {}  # the `initialize` answer: version, account, models, ...
        self._options = command.Options()
        self.session_id: str | None = None  # the CLI's session (its transcript), as its events report it
        self._prompts: list[str] = []  # uuids of the conversation's prompts: rewinding them, last first, empties it
        self._replayed = False  # the conversation began with replayed history, which cannot be rewound
        self._seen_output = False
        self._queue: asyncio.Queue[TurnEvent | _End | _Tick | _Expired] = asyncio.Queue()
        self.tools = ToolHost(self._write, self._queue.put_nowait)
        self._watch_id = 0
        self._last_event = time.monotonic()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._write_lock = asyncio.Lock()
        self._request_ids = itertools.count(1)
        self.controls: collections.Counter[str] = collections.Counter()  # control requests sent, by `_control_name`
        # Traced control requests nobody awaits (interrupts), with the context they were sent in.
        self._unawaited: dict[str, tuple[tuple[float, int], contextvars.Context]] = {}
        self._closing: asyncio.Task[None] | None = None
        pipes.worker = self

    # --- life cycle ------------------------------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        settings: Settings,
        launch: command.Launch | None = None,
        *,
        resume: str | None = None,
        observe: Callable[[TurnEvent], None] | None = None,
    ) -> Worker:
        """Start a process and wait until it answers `initialize` (which also fixes its system prompt, if any);
        with `resume`, the process continues that CLI session from its transcript."""
        workspace = settings.workspace_path
        loop = asyncio.get_running_loop()
        try:
            workspace.mkdir(parents=True, exist_ok=True)
            transport, pipes = await loop.subprocess_exec(
                _Pipes,
                *command.argv(settings, launch, resume=resume),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workspace,
                env=command.environment(settings),
                start_new_session=True,  # its own process group: signals reach the CLI and its tools together
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise errors.CLIUnavailable(
                f"Cannot start the Claude Code CLI at {settings.cli_path!r} ({exc.strerror}). "
                "Run `make install`, or set MAXPROXY_CLAUDE_PATH to the `claude` executable."
            ) from None
        worker = cls(transport, pipes, settings, launch, observe)
        if resume is not None:
            worker.session_id = resume
            worker._replayed = True  # its history was not written by this worker: it cannot rewind it
        log.debug("worker_started", worker=worker.name, pid=worker.pid, model=launch.model if launch else None)
        try:
            fields = command.initialize_request(settings, launch)
            worker.info = await worker.control("initialize", timeout=START_TIMEOUT, **fields)
        except BaseException as exc:
            try:
                if isinstance(exc, errors.ProxyError):
                    await worker._wait_exit()  # its exit code and stderr make the message
            finally:
                await worker._reap()
            if isinstance(exc, errors.ProxyError):
                raise errors.CLIUnavailable(worker._exit_message("at start-up")) from None
            raise
        return worker

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode()

    @property
    def alive(self) -> bool:
        return self.returncode is None and not self.broken

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

    def rest(self) -> None:
        """Between turns: its idle time starts now."""
        self.idle_since = time.monotonic()

    def stop(self) -> asyncio.Task[None]:
        """Start stopping the process (interrupting a running turn first); the task reaps it. Idempotent."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"{self.name}-close")
        return self._closing

    async def close(self) -> None:
        """Stop and reap the process. A cancelled caller does not cancel the stop: its owner awaits it later."""
        await asyncio.shield(self.stop())

    async def _reap(self) -> None:
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
        step = self.settings.stop_step_timeout
        if self.returncode is None and self.in_turn and not self.broken:
            # An interrupt ends the turn in ~20 ms, so the CLI stops spending before it exits.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send_interrupt(), step)
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        how = "eof"
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                how = sig.name
                self._signal_group(sig)
            try:
                await asyncio.wait_for(asyncio.shield(self.pipes.exited), step)
                break
            except TimeoutError:
                continue
        else:
            log.error("worker_unreaped", worker=self.name, pid=self.pid)
        # Whatever the CLI started (tool subprocesses) goes with it.
        self._signal_group(signal.SIGKILL)
        self.transport.close()
        self._fail_pending("The CLI exited before answering a control request")
        log.debug("worker_stopped", worker=self.name, pid=self.pid, returncode=self.returncode, how=how)

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
        async with self._write_lock:
            self._write(data)
            await self.pipes.drain()

    def _write(self, data: bytes) -> None:
        stdin = self.transport.get_pipe_transport(0)
        if stdin is None or stdin.is_closing() or self.returncode is not None:
            self.broken = True
            raise errors.CLIFailed(self._exit_message("before it read its input"))
        stdin.write(data)  # type: ignore[attr-defined]

    async def control(self, subtype: str, *, timeout: float = CONTROL_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Send a control request and wait for its response."""
        request_id = f"req_{next(self._request_ids)}_{self.name}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        name = _control_name(subtype, fields)
        self.controls[name] += 1
        trace = self._trace_start()
        try:
            request = {"subtype": subtype, **fields}
            await self.send({"type": "control_request", "request_id": request_id, "request": request})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise errors.CLIFailed(f"The CLI did not answer the {subtype} control request in {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)
            if trace is not None:
                self._trace_end(name, trace)

    async def _send_interrupt(self) -> None:
        request_id = f"req_{next(self._request_ids)}_{self.name}"
        self.controls["interrupt"] += 1
        trace = self._trace_start()
        if trace is not None:  # nobody waits on its answer: timed when the answer comes (see `_on_line`)
            self._unawaited[request_id] = (trace, contextvars.copy_context())
        await self.send({"type": "control_request", "request_id": request_id, "request": {"subtype": "interrupt"}})

    def _trace_start(self) -> tuple[float, int] | None:
        """With debug logging, the clock and the CLI's CPU before a control request (see `_trace_end`)."""
        return (time.perf_counter(), self.cpu_ns()) if _trace.isEnabledFor(logging.DEBUG) else None

    def _trace_end(self, name: str, trace: tuple[float, int], event: str = "cli_control") -> None:
        # The CLI's CPU while it handled the request: what each control request around a turn costs (`make bench`).
        started, cpu = trace
        log.debug(
            event,
            worker=self.name,
            subtype=name,
            ms=round((time.perf_counter() - started) * 1000, 2),
            cli_cpu_ms=round((self.cpu_ns() - cpu) / 1e6, 2),
            in_turn=self.in_turn,
        )

    def cpu_ns(self) -> int:
        """CPU time of the CLI's main (JavaScript) thread so far, to the nanosecond (Linux; 0 where /proc is not
        available). Not all threads: the process's total comes in 10 ms ticks, and summing its threads' counters
        goes backwards when one exits (measured: the CLI's helper threads come and go while it idles)."""
        try:
            return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    async def interrupt(self) -> None:
        """Ask the CLI to end the running turn now; its `result` follows within milliseconds."""
        if self.alive and self.in_turn and not self.interrupted:
            self.interrupted = True
            await self._send_interrupt()

    def _on_line(self, line: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.broken or not line.strip():
            return
        try:
            event = decode(line)
        except ProtocolError as exc:
            self._on_end(exc)
            return
        if event is None:
            return
        self._seen_output = True
        if isinstance(event, ControlResponse):
            if (unawaited := self._unawaited.pop(event.response.request_id, None)) is not None:
                trace, context = unawaited
                context.run(self._trace_end, "interrupt", trace)  # logged with the request it was sent for
            future = self._pending.get(event.response.request_id)
            if future is not None and not future.done():
                if event.response.subtype == "success":
                    future.set_result(event.response.response or {})
                else:
                    future.set_exception(errors.CLIFailed(f"CLI control request failed: {event.response.error}"))
        elif isinstance(event, ControlRequest):
            if event.request.subtype == "mcp_message" and event.request.server_name == self.tools.server:
                self.tools.handle(event)
            else:
                self._refuse(event)
        else:
            self._queue.put_nowait(event)

    def _on_end(self, error: ProtocolError | None) -> None:
        """stdout ended (the process is going) or broke protocol (it must go): never reuse the worker."""
        if self.broken:
            return
        self.broken = True
        self._queue.put_nowait(_End(error))
        self._fail_pending("The CLI closed its output before answering")

    def _refuse(self, request: ControlRequest) -> None:
        # maxproxy registers no hooks, other MCP servers or permission prompts, so the CLI should never ask; if it does,
        # answer at once rather than leave it waiting forever.
        log.warning("cli_control_request_refused", worker=self.name, subtype=request.request.subtype)
        answer = {
            "subtype": "error",
            "request_id": request.request_id,
            "error": f"maxproxy does not handle {request.request.subtype}",
        }
        with contextlib.suppress(errors.ProxyError):
            self._write(encode_line({"type": "control_response", "response": answer}))

    def _on_stderr(self, line: bytes) -> None:
        text = line.decode(errors="replace").strip()
        if text:
            self._stderr.append(text[:300])
            log.info("cli_stderr", worker=self.name, line=text[:300])

    def _exit_message(self, when: str) -> str:
        code = self.returncode
        tail = self.stderr_tail()
        return (
            f"The Claude Code CLI exited {when}"
            + (f" (code {code})" if code is not None else "")
            + (f": {tail}" if tail else "")
        )

    # --- turns ---------------------------------------------------------------------------------------------------

    async def next_event(self) -> TurnEvent | None:
        """The next event of the turn being watched (see `_watching`); None for a keepalive tick."""
        while True:
            item = self._queue.get_nowait() if not self._queue.empty() else await self._queue.get()
            if isinstance(item, _Tick | _Expired):
                if item.watch != self._watch_id:
                    continue  # left over from an earlier watch
                if isinstance(item, _Expired):
                    raise item.error
                return None
            if isinstance(item, _End):
                self._queue.put_nowait(item)  # every later read sees the end too
                await self._wait_exit()
                if item.error is not None:
                    raise errors.CLIFailed(f"The Claude Code CLI broke its output protocol: {item.error}")
                if not self._seen_output:
                    raise errors.CLIUnavailable(self._exit_message("at start-up"))
                raise errors.CLIFailed(self._exit_message("in the middle of a turn"))
            self._last_event = time.monotonic()
            return item

    @contextlib.asynccontextmanager
    async def _watching(self, watchdog: Watchdog, tick: float | None = None) -> AsyncIterator[None]:
        """Run the watchdog (and keepalive ticks) for the events read inside: one timer task per turn rather than a
        timer per event, which matters when every token is an event."""
        self._watch_id += 1
        self._last_event = started = time.monotonic()
        task = asyncio.create_task(self._watch(self._watch_id, watchdog, tick, started), name=f"{self.name}-watch")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self, watch: int, watchdog: Watchdog, tick: float | None, started: float) -> None:
        last_tick = 0.0
        while True:
            now = time.monotonic()
            # Silence counts from the later of the watch's start and the last output line: a worker that was quiet
            # for hours before this turn (or a hung turn being interrupted) gets the whole limit.
            deadline = min(max(self.last_activity, started) + watchdog.inactivity, watchdog.deadline)
            if now >= deadline:
                if now >= watchdog.deadline:
                    error = errors.Timeout(f"The turn ran past the {watchdog.cap:g}s limit", code="turn_timeout")
                else:
                    message = f"The Claude Code CLI was silent for {watchdog.inactivity:g}s"
                    error = errors.Timeout(message, code="cli_inactivity_timeout")
                self._queue.put_nowait(_Expired(watch, error))
                return
            wake = deadline
            if tick is not None:
                due = max(self._last_event, last_tick) + tick
                if now >= due:
                    self._queue.put_nowait(_Tick(watch))
                    last_tick = now
                    continue
                wake = min(wake, due)
            await asyncio.sleep(wake - now)

    async def _wait_exit(self) -> None:
        # stdout closed: the exit code and stderr are moments away; wait briefly so the message can carry them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.pipes.exited), 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.pipes.stderr_closed), 0.5)

    async def apply(self, options: command.Options) -> None:
        """Per-turn settings (output limit, effort), sent only when they differ from the last ones."""
        if options != self._options:
            await self.control("apply_flag_settings", settings=options.flag_settings())
            self._options = options

    async def offer(self, toolset: tools.Toolset) -> None:
        """List exactly these client tools (none: an empty toolset) for the next turn. A change takes effect once the
        CLI has listed the tools again. The CLI keeps every tool it has sent upstream under a server's name for the
        rest of the process, whatever a later listing says (measured: `list_changed` only adds), so a listing that
        drops or changes such a tool goes to a new server in place of the old one (~15-40 ms); a turn that waits on
        calls keeps its server, whose calls are open."""
        listed = self.tools.offer(toolset)
        if listed is not None:
            trace = self._trace_start()
            if self.tools.needs_server and not self.tools.waiting:
                await self._replace_server()
            else:
                notice = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
                await self.control("mcp_message", server_name=self.tools.server, message=notice)
            try:
                await asyncio.wait_for(asyncio.shield(listed), RELIST_TIMEOUT)
            except TimeoutError:
                message = f"The CLI did not list the client's tools again in {RELIST_TIMEOUT:g}s"
                raise errors.CLIFailed(message) from None
            if trace is not None:  # the whole change: its control requests and the CLI's `tools/list`
                self._trace_end("offer", trace, "cli_tools_listed")
        self.tools.listed_for_turn()

    async def _replace_server(self) -> None:
        name, rules = self.tools.replace_server()
        if rules is not None:  # `--allowedTools` names the first server only; these rules replace the last ones
            await self.control("apply_flag_settings", settings={"permissions": {"allow": rules}})
        config = {"type": "sdk", "name": name, **command.server_config(self.settings)}
        answer = await self.control("mcp_set_servers", servers={name: config})
        if answer.get("errors") or name not in answer.get("added", ()):
            raise errors.CLIFailed(f"The CLI did not take the client's tools: {answer}")

    @property
    def waiting(self) -> bool:
        """The turn stopped at tool calls that the client answers."""
        return self.in_turn and self.tools.waiting

    async def turn(
        self,
        lines: Sequence[dict[str, Any]],
        watchdog: Watchdog,
        *,
        tick: float | None = None,
        results: dict[str, str] | None = None,
    ) -> AsyncGenerator[TurnEvent | None, None]:
        """Write one turn's input and yield its events up to and including its `Result` (and None after every
        `tick` seconds without an event). A consumer that stops at a `ToolCall` leaves the turn waiting for it.

        `lines` replays earlier history (user lines with `shouldQuery: false`, assistant lines) and ends with the
        querying user line. Each non-querying user line is answered by its own `result` before the next line may be
        written: the CLI queues user lines but appends assistant lines at once, so written back-to-back the history
        would reach the model out of order (protocol note §5.1).

        With `results`, the turn waiting for tool calls goes on: `lines` (user messages the client sent after the
        results) go first, so that the CLI adds them to the results it is about to get (measured: one turn, the
        message shown to the model with the results), then the calls are answered.
        """
        if results is not None:
            async for event in self._proceed(lines, results, watchdog, tick):
                yield event
            return
        # `in_turn` stays set if the consumer stops early, so that the owner interrupts the turn.
        self.in_turn = True
        self.interrupted = False
        self.last_result = None
        self.turns += 1
        self.lines_written = len(lines)
        async with self._watching(watchdog, tick):
            for line in lines:
                if line.get("type") == "user":
                    line = self._track(line)
                await self.send(line)
                if line.get("type") == "user" and line.get("shouldQuery") is False:
                    while not isinstance(await self.next_event(), Result):
                        pass
            while self.in_turn:
                yield await self._turn_event()

    async def _proceed(
        self, lines: Sequence[dict[str, Any]], results: dict[str, str], watchdog: Watchdog, tick: float | None
    ) -> AsyncGenerator[TurnEvent | None, None]:
        self.lines_written = len(lines) + len(results)
        async with self._watching(watchdog, tick):
            for line in lines:
                await self.send(line)
            self.tools.answer(results)
            while self.in_turn:
                yield await self._turn_event()

    async def finish(self, timeout: float) -> None:
        """End a turn that its consumer left: interrupt it and read its remaining events up to the `Result`."""
        await self.interrupt()
        async with self._watching(Watchdog(timeout, timeout)):
            while self.in_turn:
                await self._turn_event()

    def _track(self, line: dict[str, Any]) -> dict[str, Any]:
        """Give a user line an id, and remember the prompts: rewinding them later empties the conversation."""
        line = {**line, "uuid": str(uuid.uuid4())}
        if line.get("shouldQuery") is False:
            self._replayed = self._replayed or not self._prompts
        else:
            self._prompts.append(line["uuid"])
        return line

    async def _turn_event(self) -> TurnEvent | None:
        """The next event of the running turn, shown to the observer; the `Result` ends the turn."""
        event = await self.next_event()
        if event is not None and self._observe is not None:
            self._observe(event)
        if isinstance(event, Result):
            self.in_turn = False
            self.tools.pending.clear()  # whatever still waited, the turn is over
            self.last_result = event
            total = event.total_cost_usd or 0.0
            self.turn_cost, self._cost_total = max(0.0, total - self._cost_total), max(total, self._cost_total)
            self.session_id = event.session_id or self.session_id
        return event

    @property
    def resettable(self) -> bool:
        """Whether `reset` can empty the conversation. Measured: rewinding its prompts, last first, leaves nothing;
        replayed history (`shouldQuery: false` lines) cannot be rewound, and `/clear` leaves a
        `<local-command-caveat>` block in front of every later conversation of the process."""
        return not self._replayed

    async def reset(self) -> bool:
        """Empty the conversation so that the next turn starts from nothing; False if that cannot be done."""
        prompts, replayed = self._prompts, self._replayed
        self._prompts, self._replayed = [], False
        if replayed:
            return False
        for prompt in reversed(prompts):
            answer = await self.control("rewind_conversation", target_message_uuid=prompt)
            if not answer.get("rewound"):
                log.warning("worker_rewind_failed", worker=self.name, reason=answer.get("reason"))
                return False
        return True
