"""The physical floor of any warm-pool proxy: one warm `claude` process in stream-json mode, started exactly as
maxproxy starts its workers (`command.argv`, `command.environment`, the `initialize` request with the SDK MCP server
for the client's tools, answered as a worker answers it, with no tools listed), fed "hi" turns directly on stdin — no
proxy, no pool, no control requests around the turns. Optionally each conversation is rewound after its turn (as a
held worker is reclaimed), which prices a rewind by difference. CPU is the process's utime+stime from /proc. The
same process also replays a whole history as a worker would (`replay`, with the client's tools listed), which the
long-conversation case uses for its cold CLI; `spawn` is the one way the bench starts a CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from maxproxy import prompt
from maxproxy.bench import procfs
from maxproxy.claude import command
from maxproxy.settings import Settings


async def spawn(
    settings: Settings,
    launch: command.Launch,
    *,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """One `claude` process exactly as maxproxy starts a worker (argv, environment, working directory), in its own
    process group; stderr is dropped. `flags` and `env` (in place of the worker's environment) are for A/B runs."""
    settings.workspace_path.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        *command.argv(settings, launch),
        *flags,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=settings.workspace_path,
        env=command.environment(settings) if env is None else dict(env),
        limit=2**24,
        start_new_session=True,
    )


class WarmCLI:
    def __init__(self, proc: asyncio.subprocess.Process, listing: list[dict[str, Any]]) -> None:
        self.proc = proc
        self.listing = listing
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        settings: Settings,
        launch: command.Launch,
        listing: list[dict[str, Any]] | None = None,
        *,
        flags: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> WarmCLI:
        """Spawned (see `spawn`) and initialised; with `listing`, its SDK MCP server lists these tools
        (`Toolset.listing`)."""
        proc = await spawn(settings, launch, flags=flags, env=env)
        cli = cls(proc, listing or [])
        try:
            await cli.control("initialize", **command.initialize_request(settings, launch))
        except BaseException:
            await cli.close()
            raise
        return cli

    def cpu(self) -> tuple[float, float]:
        """(no proxy: 0, the CLI's CPU seconds so far): the shape `bench.measure` takes."""
        return 0.0, procfs.cpu_of(self.proc.pid)

    def pids(self) -> list[int]:
        """The process whose CPU `bench.measure` lets settle first."""
        return [self.proc.pid]

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
        """The SDK MCP server's answers, as a worker gives them (listing `self.listing`)."""
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
                mcp = {
                    "jsonrpc": "2.0",
                    "id": rpc_id,
                    "result": {**result, "serverInfo": {"name": "floor", "version": "1"}},
                }
            elif method == "tools/list":
                mcp = {"jsonrpc": "2.0", "id": rpc_id, "result": {"tools": self.listing}}
            else:
                mcp = {"jsonrpc": "2.0", "id": rpc_id, "result": {}}
            answer = {"subtype": "success", "request_id": line["request_id"], "response": {"mcp_response": mcp}}
        self._write({"type": "control_response", "response": answer})

    async def turn(self, text: str = "hi", *, rewind: bool = False) -> tuple[float, float, int]:
        """One turn: (time to its first text delta, to its result, text deltas); with `rewind`, its conversation is
        then rewound to nothing (not timed)."""
        line = {**prompt.user_line([{"type": "text", "text": text}]), "uuid": str(uuid.uuid4())}
        first, total, deltas = await self.replay([line])
        if rewind:
            answer = await self.control("rewind_conversation", target_message_uuid=line["uuid"])
            assert answer.get("rewound"), answer
        return first, total, deltas

    async def replay(self, lines: list[dict[str, Any]], since: float | None = None) -> tuple[float, float, int]:
        """Write one turn's lines as a worker writes them (each `shouldQuery: false` user line waits for its own
        `result`, README "History"), the last one querying: (seconds to the turn's first text delta, to its result,
        text deltas), counted from now or from `since` (a `time.perf_counter()`, e.g. before the spawn)."""
        started = time.perf_counter() if since is None else since
        first, deltas = 0.0, 0
        async with asyncio.timeout(60):
            for line in lines:
                self._write(line)
                if line.get("type") == "user" and line.get("shouldQuery") is False:
                    await self._result()
            while (event := await self.events.get()) is not None:
                if event.get("type") == "stream_event" and event["event"].get("delta", {}).get("type") == "text_delta":
                    deltas += 1
                    first = first or time.perf_counter() - started
                elif event.get("type") == "result":
                    return first, time.perf_counter() - started, deltas
        raise RuntimeError("the floor's CLI exited")

    async def _result(self) -> None:
        while (event := await self.events.get()) is not None:
            if event.get("type") == "result":
                return
        raise RuntimeError("the floor's CLI exited")

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


class Fleet:
    """Several warm CLIs fed directly, each turn on whichever is free: the floor of scaling on this machine (as many
    processes as maxproxy's warm workers, idle ones burning what idle CLIs burn, no proxy), in `bench.measure`'s
    `Meter` shape."""

    def __init__(self, clis: list[WarmCLI]) -> None:
        self.clis = clis
        self._free: asyncio.Queue[WarmCLI] = asyncio.Queue()
        for cli in clis:
            self._free.put_nowait(cli)

    @classmethod
    async def start(cls, settings: Settings, launch: command.Launch, size: int) -> Fleet:
        started = await asyncio.gather(*(WarmCLI.start(settings, launch) for _ in range(size)), return_exceptions=True)
        clis = [cli for cli in started if isinstance(cli, WarmCLI)]
        if len(clis) < size:
            await asyncio.gather(*(cli.close() for cli in clis))
            raise next(e for e in started if isinstance(e, BaseException))
        return cls(clis)

    async def turn(self) -> tuple[float, float, int]:
        cli = await self._free.get()
        try:
            return await cli.turn()
        finally:
            self._free.put_nowait(cli)

    def cpu(self) -> tuple[float, float]:
        return 0.0, sum(cli.cpu()[1] for cli in self.clis)

    def pids(self) -> list[int]:
        return [pid for cli in self.clis for pid in cli.pids()]

    async def close(self) -> None:
        await asyncio.gather(*(cli.close() for cli in self.clis))
