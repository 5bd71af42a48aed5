"""A `Worker` is one `claude -p --input-format stream-json` process put to work: it composes the process (`Process`:
spawn, pipes, stop ladder), the control protocol (`Control`), the per-turn watch (`Watch`, `Watchdog`) and the SDK MCP
server for the client's tools (`ToolHost`). It readies the process (`initialize`), decodes its stdout lines as they
arrive, runs turns under the watchdog, interrupts them, lists the client's tools, applies per-turn options, tracks the
conversation's prompts so that it can rewind it to nothing and serve an unrelated one, and reports each turn's cost
and the CLI's session. The worker decides nothing about policy; its owner (the pool) does.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import structlog

from maxproxy import errors, tools
from maxproxy.claude import command
from maxproxy.claude.control import CONTROL_TIMEOUT, Control
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
from maxproxy.claude.process import Process
from maxproxy.claude.watchdog import Expired, Tick, Watch, Watchdog
from maxproxy.settings import Settings

log = structlog.get_logger("maxproxy.worker")

START_TIMEOUT = 30.0
_ids = itertools.count(1)


class _End:
    """Sentinel put on the event queue when stdout ends or turns to garbage."""

    def __init__(self, error: ProtocolError | None = None) -> None:
        self.error = error


class Worker:
    def __init__(
        self, settings: Settings, launch: command.Launch | None, observe: Callable[[TurnEvent], None] | None = None
    ) -> None:
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
        self._observe = observe  # sees every turn event (its owner's way to the event bus)
        self.info: dict[str, Any] = {}  # the `initialize` answer: version, account, models, ...
        self._options = command.Options()
        self.session_id: str | None = None  # the CLI's session (its transcript), as its events report it
        self._prompts: list[str] = []  # uuids of the conversation's prompts: rewinding them, last first, empties it
        self._replayed = False  # the conversation began with replayed history, which cannot be rewound
        self._seen_output = False
        self._queue: asyncio.Queue[TurnEvent | _End | Tick | Expired] = asyncio.Queue()
        self._process = Process(
            self.name,
            stop_step_timeout=settings.stop_step_timeout,
            on_line=self._on_line,
            on_end=self._on_end,
            farewell=self._farewell,
            on_stopped=self._on_stopped,
        )
        self._control = Control(
            self.name, send=self.send, write=self._write, cpu_ns=self.cpu_ns, in_turn=lambda: self.in_turn
        )
        self._watch = Watch(self.name, self._queue.put_nowait, lambda: self.last_activity)
        self.tools = ToolHost(self._write, self._queue.put_nowait)

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
        worker = cls(settings, launch, observe)
        try:
            workspace.mkdir(parents=True, exist_ok=True)
            argv = command.argv(settings, launch, resume=resume)
            await worker._process.spawn(argv, cwd=workspace, env=command.environment(settings))
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise errors.CLIUnavailable(
                f"Cannot start the Claude Code CLI at {settings.cli_path!r} ({exc.strerror}). "
                "Run `make install`, or set MAXPROXY_CLAUDE_PATH to the `claude` executable."
            ) from None
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
                    await worker._process.wait_exit()  # its exit code and stderr make the message
            finally:
                await worker._process.reap()
            if isinstance(exc, errors.ProxyError):
                raise errors.CLIUnavailable(worker._process.exit_message("at start-up")) from None
            raise
        return worker

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    @property
    def alive(self) -> bool:
        return self.returncode is None and not self.broken

    @property
    def controls(self) -> collections.Counter[str]:
        """Control requests sent, by name (an `mcp_message` by the method it carries)."""
        return self._control.controls

    def stderr_tail(self) -> str:
        return self._process.stderr_tail()

    def rss_bytes(self) -> int:
        """Resident memory of the CLI process (Linux; 0 where /proc is not available)."""
        return self._process.rss_bytes()

    def cpu_ns(self) -> int:
        """CPU time of the CLI's main (JavaScript) thread so far, in nanoseconds (see `Process.cpu_ns`)."""
        return self._process.cpu_ns()

    @property
    def options(self) -> command.Options:
        """The per-turn settings the CLI has now (the last ones applied)."""
        return self._options

    def stop(self) -> asyncio.Task[None]:
        """Start stopping the process (interrupting a running turn first); the task reaps it. Idempotent."""
        return self._process.stop()

    async def close(self) -> None:
        """Stop and reap the process. A cancelled caller does not cancel the stop: its owner awaits it later."""
        await self._process.close()

    def _farewell(self) -> Awaitable[None] | None:
        # An interrupt ends the turn in ~20 ms, so the CLI stops spending before it exits.
        return self._control.interrupt() if self.in_turn and not self.broken else None

    def _on_stopped(self) -> None:
        self._control.fail("The CLI exited before answering a control request")

    # --- I/O -----------------------------------------------------------------------------------------------------

    async def send(self, line: dict[str, Any]) -> None:
        try:
            await self._process.send(encode_line(line))
        except errors.CLIFailed:
            self._break()
            raise

    def _write(self, data: bytes) -> None:
        try:
            self._process.write(data)
        except errors.CLIFailed:
            self._break()
            raise

    def _break(self) -> None:
        # Nothing more is read from a broken worker.
        self.broken = True
        self._process.ignore_output()

    async def control(self, subtype: str, *, timeout: float = CONTROL_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Send a control request and wait for its response."""
        return await self._control.request(subtype, timeout=timeout, **fields)

    async def interrupt(self) -> None:
        """Ask the CLI to end the running turn now; its `result` follows within milliseconds."""
        if self.alive and self.in_turn and not self.interrupted:
            self.interrupted = True
            await self._control.interrupt()

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
            self._control.answer(event)
        elif isinstance(event, ControlRequest):
            if event.request.subtype == "mcp_message" and event.request.server_name == self.tools.server:
                self.tools.handle(event)
            else:
                self._control.refuse(event)
        else:
            self._queue.put_nowait(event)

    def _on_end(self, error: ProtocolError | None) -> None:
        """stdout ended (the process is going) or broke protocol (it must go): never reuse the worker."""
        if self.broken:
            return
        self._break()
        self._queue.put_nowait(_End(error))
        self._control.fail("The CLI closed its output before answering")

    # --- turns ---------------------------------------------------------------------------------------------------

    async def next_event(self) -> TurnEvent | None:
        """The next event of the turn being watched (see `Watch.watching`); None for a keepalive tick."""
        while True:
            item = self._queue.get_nowait() if not self._queue.empty() else await self._queue.get()
            if isinstance(item, Tick | Expired):
                if not self._watch.current(item):
                    continue  # left over from an earlier watch
                if isinstance(item, Expired):
                    raise item.error
                return None
            if isinstance(item, _End):
                self._queue.put_nowait(item)  # every later read sees the end too
                await self._process.wait_exit()
                if item.error is not None:
                    raise errors.CLIFailed(f"The Claude Code CLI broke its output protocol: {item.error}")
                if not self._seen_output:
                    raise errors.CLIUnavailable(self._process.exit_message("at start-up"))
                raise errors.CLIFailed(self._process.exit_message("in the middle of a turn"))
            self._watch.saw_event()
            return item

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
            trace = self._control.trace_start()
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
                self._control.trace_end("offer", trace, "cli_tools_listed")
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
        async with self._watch.watching(watchdog, tick):
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
        async with self._watch.watching(watchdog, tick):
            for line in lines:
                await self.send(line)
            self.tools.answer(results)
            while self.in_turn:
                yield await self._turn_event()

    async def finish(self, timeout: float) -> None:
        """End a turn that its consumer left: interrupt it and read its remaining events up to the `Result`."""
        await self.interrupt()
        async with self._watch.watching(Watchdog(timeout, timeout)):
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
