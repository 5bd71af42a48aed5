"""The physical floor of any warm-pool proxy: one warm `claude` process in stream-json mode, started exactly as
maxproxy starts its workers (`command.argv`, `command.environment`, the `initialize` request with the SDK MCP server
for the client's tools, answered as a worker answers it, with no tools listed), fed "hi" turns directly on stdin — no
proxy, no pool, no control requests around the turns. Optionally each conversation is rewound after its turn (as a
held worker is reclaimed), which prices a rewind by difference. CPU is the process's utime+stime from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from maxproxy import prompt
from maxproxy.claude import command
from maxproxy.settings import Settings

TICKS = os.sysconf("SC_CLK_TCK")


class WarmCLI:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, settings: Settings, launch: command.Launch) -> WarmCLI:
        settings.workspace_path.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *command.argv(settings, launch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=settings.workspace_path,
            env=command.environment(settings),
            limit=2**24,
            start_new_session=True,
        )
        cli = cls(proc)
        try:
            await cli.control("initialize", **command.initialize_request(settings, launch))
        except BaseException:
            await cli.close()
            raise
        return cli

    def cpu(self) -> tuple[float, float]:
        """(no proxy: 0, the CLI's CPU seconds so far): the shape `bench.measure` takes."""
        raw = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = raw[raw.rfind(")") + 2 :].split()
        return 0.0, (int(fields[11]) + int(fields[12])) / TICKS

    def _write(self, line: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(line).encode() + b"\n")

    async def control(self, subtype: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        request_id = f"floor_{self._ids}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._write({"type": "control_request", "request_id": request_id, "request": {"subtype": subtype, **fields}})
        async with asyncio.timeout(30):
            return await future

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            kind = line.get("type")
            if kind == "control_response":
                response = line["response"]
                future = self._pending.pop(response.get("request_id"), None)
                if future is not None and not future.done():
                    future.set_result(response.get("response") or {})
            elif kind == "control_request":
                self._answer(line)
            else:
                self.events.put_nowait(line)
        self.events.put_nowait(None)

    def _answer(self, line: dict[str, Any]) -> None:
        """The SDK MCP server's answers, as a worker gives them with no client tools."""
        request = line["request"]
        message = request.get("message") or {}
        method, rpc_id = message.get("method"), message.get("id")
        if request.get("subtype") != "mcp_message":
            answer = {"subtype": "error", "request_id": line["request_id"], "error": "not handled"}
        else:
            if rpc_id is None:
                mcp: dict[str, Any] = {"jsonrpc": "2.0", "result": {}}
            elif method == "initialize":
                version = (message.get("params") or {}).get("protocolVersion") or "2025-06-18"
                result = {"protocolVersion": version, "capabilities": {"tools": {"listChanged": True}}}
                mcp = {"jsonrpc": "2.0", "id": rpc_id, "result": {**result, "serverInfo": {"name": "floor"}}}
            elif method == "tools/list":
                mcp = {"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": []}}
            else:
                mcp = {"jsonrpc": "2.0", "id": rpc_id, "result": {}}
            answer = {"subtype": "success", "request_id": line["request_id"], "response": {"mcp_response": mcp}}
        self._write({"type": "control_response", "response": answer})

    async def turn(self, text: str = "hi", *, rewind: bool = False) -> tuple[float, float, int]:
        """One turn: (time to its first text delta, to its result, text deltas); with `rewind`, its conversation is
        then rewound to nothing (not timed)."""
        line = {**prompt.user_line([{"type": "text", "text": text}]), "uuid": str(uuid.uuid4())}
        started = time.perf_counter()
        self._write(line)
        first, deltas = 0.0, 0
        async with asyncio.timeout(60):
            while (event := await self.events.get()) is not None:
                if event.get("type") == "stream_event" and event["event"].get("delta", {}).get("type") == "text_delta":
                    deltas += 1
                    first = first or time.perf_counter() - started
                elif event.get("type") == "result":
                    break
            else:
                raise RuntimeError("the floor's CLI exited")
        total = time.perf_counter() - started
        if rewind:
            answer = await self.control("rewind_conversation", target_message_uuid=line["uuid"])
            assert answer.get("rewound"), answer
        return first, total, deltas

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            await self.proc.wait()
        await self._reader
