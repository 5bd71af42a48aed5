"""maxproxy's side of the CLI's control protocol (protocol note §5.3): `Control` sends control requests on stdin, each
with its own id, and waits for the `control_response` that carries it back; sends the one request nobody awaits (an
interrupt, whose effect is the turn's `result`); refuses the requests the CLI makes that maxproxy never invited;
counts what it sends by name; fails whatever still waits when the process goes; and, with debug logging on, times
each request — its round trip and the CLI's CPU meanwhile (`cli_control`), which is how `make bench` prices the
control requests around each turn. At info level nothing is timed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from maxproxy import errors
from maxproxy.claude.events import ControlRequest, ControlResponse, encode_line

# The worker's logger (and the level that switches timing on): a worker's control requests are its events.
log = structlog.get_logger("maxproxy.worker")
_trace = logging.getLogger("maxproxy.worker")  # whether debug events are wanted: control requests are timed then

CONTROL_TIMEOUT = 10.0

Trace = tuple[float, int]  # the clock and the CLI's CPU when a request went out


def _control_name(subtype: str, fields: dict[str, Any]) -> str:
    """A control request's name in counts and logs: an `mcp_message` by the JSON-RPC method it carries."""
    message = fields.get("message")
    if subtype == "mcp_message" and isinstance(message, dict):
        return f"mcp_message:{message.get('method') or 'response'}"
    return subtype


class Control:
    """The control requests of one worker `name`: `send` writes a line with flow control, `write` one without
    waiting (answers go out at once, in order), `cpu_ns` reads the CLI's CPU, `in_turn` says whether a turn runs."""

    def __init__(
        self,
        name: str,
        *,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        write: Callable[[bytes], None],
        cpu_ns: Callable[[], int],
        in_turn: Callable[[], bool],
    ) -> None:
        self.name = name
        self._send = send
        self._write = write
        self._cpu_ns = cpu_ns
        self._in_turn = in_turn
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.controls: collections.Counter[str] = collections.Counter()  # requests sent, by `_control_name`
        # Traced requests nobody awaits (interrupts), with the context they were sent in.
        self._unawaited: dict[str, tuple[Trace, contextvars.Context]] = {}

    async def request(self, subtype: str, *, timeout: float = CONTROL_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """Send a control request and wait for its response."""
        request_id = f"req_{next(self._ids)}_{self.name}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        name = _control_name(subtype, fields)
        self.controls[name] += 1
        trace = self.trace_start()
        try:
            request = {"subtype": subtype, **fields}
            await self._send({"type": "control_request", "request_id": request_id, "request": request})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise errors.CLIFailed(f"The CLI did not answer the {subtype} control request in {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)
            if trace is not None:
                self.trace_end(name, trace)

    async def interrupt(self) -> None:
        """Ask the CLI to end the running turn; nobody awaits the answer (the turn's `result` follows it)."""
        request_id = f"req_{next(self._ids)}_{self.name}"
        self.controls["interrupt"] += 1
        trace = self.trace_start()
        if trace is not None:  # timed when its answer comes (see `answer`)
            self._unawaited[request_id] = (trace, contextvars.copy_context())
        await self._send({"type": "control_request", "request_id": request_id, "request": {"subtype": "interrupt"}})

    def answer(self, event: ControlResponse) -> None:
        """A `control_response` line: the answer to the request with its id."""
        if (unawaited := self._unawaited.pop(event.response.request_id, None)) is not None:
            trace, context = unawaited
            context.run(self.trace_end, "interrupt", trace)  # logged with the request it was sent for
        future = self._pending.get(event.response.request_id)
        if future is not None and not future.done():
            if event.response.subtype == "success":
                future.set_result(event.response.response or {})
            else:
                future.set_exception(errors.CLIFailed(f"CLI control request failed: {event.response.error}"))

    def refuse(self, request: ControlRequest) -> None:
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

    def fail(self, message: str) -> None:
        """The CLI will not answer (its output ended, or it exited): whatever waits fails now."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(errors.CLIFailed(message))

    def trace_start(self) -> Trace | None:
        """With debug logging, the clock and the CLI's CPU before a control request (see `trace_end`)."""
        return (time.perf_counter(), self._cpu_ns()) if _trace.isEnabledFor(logging.DEBUG) else None

    def trace_end(self, name: str, trace: Trace, event: str = "cli_control") -> None:
        # The CLI's CPU while it handled the request: what each control request around a turn costs (`make bench`).
        started, cpu = trace
        log.debug(
            event,
            worker=self.name,
            subtype=name,
            ms=round((time.perf_counter() - started) * 1000, 2),
            cli_cpu_ms=round((self._cpu_ns() - cpu) / 1e6, 2),
            in_turn=self._in_turn(),
        )
