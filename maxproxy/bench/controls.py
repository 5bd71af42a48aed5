"""Where maxproxy's extra CLI work per request goes: the control requests its workers send around each turn, by kind
of turn. A second maxproxy (2 workers, debug logging, so that each worker logs every control request it sends with
its round trip and the CPU of the CLI's main thread meanwhile: `cli_control`, and `cli_tools_listed` for a whole
change of the client's tools) serves each kind of turn one request at a time; the events are grouped by the request id
the bench sends, and the CLI's CPU over each whole request (its take-back included: the bench lets it settle first;
both workers, every thread, in 10 ms ticks) comes from /proc. Kinds: a new conversation on a worker that holds another
(the steady state of a busy pool: the held one is rewound), the next turn of a held conversation, tools that stay the
same, tools that change every request, a tool call with its follow-up, a client that leaves after the first token (an
interrupt), and the output limit changing every request. Last, what an idle worker costs per second.
"""

from __future__ import annotations

import asyncio
import collections
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from maxproxy.bench import procfs
from maxproxy.bench.daemon import daemon
from maxproxy.bench.shapes import MODEL, WEATHER

IDLE = 10.0  # seconds of quiet to price an idle worker
SETTLE = 0.25  # after each request: its take-back (rewinds) and the CLI's trailing work land in it


@dataclass
class Kind:
    name: str
    ttfts: list[float] = field(default_factory=list)
    cli_ns: int = 0
    runs: int = 0
    seconds: float = 0.0  # wall time of the measured requests, settling included
    ids: list[str] = field(default_factory=list)


def cpu_ns(pid: int) -> int:
    """utime+stime of the whole process (every thread, exited ones too), in 10 ms ticks."""
    return round(procfs.cpu_of(pid) * 1e9)


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.rid = ""

    async def chat(
        self, messages: list[dict[str, Any]], *, tools: bool = False, leave: bool = False
    ) -> tuple[float, str, dict[str, Any] | None]:
        """One streamed chat turn: (time to first content, the answer's text, the tool call if any)."""
        body: dict[str, Any] = {"model": MODEL, "messages": messages, "stream": True}
        if tools:
            body["tools"] = [WEATHER]
        started = time.perf_counter()
        first, text, call = 0.0, [], None
        headers = {"x-request-id": self.rid}
        async with self.http.post(f"{self.url}/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            async for raw in response.content:
                if not raw.startswith(b"data: {"):
                    continue
                delta = json.loads(raw[6:])["choices"][0]["delta"] if b'"choices":[{' in raw else {}
                if delta.get("content"):
                    first = first or time.perf_counter() - started
                    text.append(delta["content"])
                    if leave:
                        response.close()  # the client goes away: maxproxy interrupts the turn
                        break
                for tool_call in delta.get("tool_calls") or []:
                    first = first or time.perf_counter() - started
                    call = call or {"id": tool_call["id"], "function": {"name": "", "arguments": ""}}
                    call["function"]["name"] += tool_call["function"].get("name") or ""
                    call["function"]["arguments"] += tool_call["function"].get("arguments") or ""
        return first, "".join(text), call

    async def message(self) -> float:
        """One streamed Messages turn with its own output limit (the worker's options change)."""
        body = {"model": MODEL, "max_tokens": 1024, "stream": True, "messages": [self.fresh()]}
        headers = {"x-request-id": self.rid, "anthropic-version": "2023-06-01"}
        started, first = time.perf_counter(), 0.0
        async with self.http.post(f"{self.url}/v1/messages", json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            async for raw in response.content:
                if raw.startswith(b"data: {") and b'"text_delta"' in raw:
                    first = first or time.perf_counter() - started
        return first

    @staticmethod
    def fresh(text: str = "hi") -> dict[str, Any]:
        return {"role": "user", "content": f"{text} ({uuid.uuid4().hex[:8]})"}


@dataclass
class Table:
    kinds: list[tuple[Kind, dict[str, list[dict[str, Any]]]]] = field(default_factory=list)
    idle_ms_per_s: float = 0.0  # CLI CPU of a worker that holds a conversation and does nothing


async def run(env: dict[str, str], n: int) -> Table:
    home = Path(env["HOME"])
    env = {
        **env,
        "MAXPROXY_STATE_DIR": str(home / "state-controls"),
        "MAXPROXY_LOG_LEVEL": "debug",
        "MAXPROXY_MAX_WORKERS": "2",
        "MAXPROXY_MIN_IDLE": "1",
        "MAXPROXY_LIMIT_SONNET": "2",
    }
    out = Table()
    async with daemon(env) as (proc, url, records), aiohttp.ClientSession() as http:
        client = Client(http, url)
        history: list[dict[str, Any]] = []

        async def new_conversation(_: int) -> float:
            return (await client.chat([client.fresh()]))[0]

        async def continued(_: int) -> float:
            nonlocal history
            if not history:  # the conversation's first turn (not counted: the kind is the turns after it)
                first = client.fresh()
                history = [first, {"role": "assistant", "content": (await client.chat([first]))[1]}]
            history.append(client.fresh("and then?"))
            first_token, text, _call = await client.chat(history)
            history.append({"role": "assistant", "content": text})
            return first_token

        async def same_tools(_: int) -> float:
            return (await client.chat([client.fresh()], tools=True))[0]

        async def changing_tools(i: int) -> float:
            # Two at a time, so that each of the two workers (taken in turn) sees the tools change every time.
            return (await client.chat([client.fresh()], tools=i // 2 % 2 == 0))[0]

        async def tool_round_trip(_: int) -> float:
            asked = client.fresh("Weather in Paris?")
            call = (await client.chat([asked], tools=True))[2]
            assert call is not None
            client.rid += "-follow-up"
            answer = {"role": "assistant", "content": None, "tool_calls": [{**call, "type": "function"}]}
            result = {"role": "tool", "tool_call_id": call["id"], "content": "22C, sunny"}
            return (await client.chat([asked, answer, result], tools=True))[0]

        async def leaves(_: int) -> float:
            return (await client.chat([client.fresh()], leave=True))[0]

        async def changing_limit(i: int) -> float:
            return await client.message() if i // 2 % 2 == 0 else (await client.chat([client.fresh()]))[0]

        cases: list[tuple[str, Callable[[int], Awaitable[float]]]] = [
            ("chat, new conversation (reclaims a held worker)", new_conversation),
            ("chat, next turn of a held conversation", continued),
            ("chat with the same tools each time", same_tools),
            ("chat, tools on and off in turn", changing_tools),
            ("tool call + its follow-up (one round trip)", tool_round_trip),
            ("chat, client leaves after the first token", leaves),
            ("messages (max_tokens 1024) and chat in turn", changing_limit),
        ]
        async with asyncio.timeout(60):
            while not procfs.children_of(proc.pid):  # one warm worker (`min_idle`); the warm-up turns start the other
                await asyncio.sleep(0.1)
        for i in range(4):  # warm both workers; both then hold a conversation
            client.rid = f"warm-{i}"
            await new_conversation(i)
        await asyncio.sleep(SETTLE)
        workers = procfs.children_of(proc.pid)
        before, started = sum(cpu_ns(pid) for pid in workers), time.perf_counter()
        await asyncio.sleep(IDLE)
        idle = sum(cpu_ns(pid) for pid in workers) - before
        out.idle_ms_per_s = idle / 1e6 / len(workers) / (time.perf_counter() - started)
        for number, (name, case) in enumerate(cases):
            kind = Kind(name)
            for _ in range(2):  # unmeasured, on both workers: the kind's steady state (tools listed, ...)
                await case(-1)
            await asyncio.sleep(SETTLE)
            for i in range(n):
                client.rid = f"k{number}-{i}"
                kind.ids.append(client.rid)
                before, started = sum(cpu_ns(pid) for pid in procfs.children_of(proc.pid)), time.perf_counter()
                kind.ttfts.append(await case(i))
                await asyncio.sleep(SETTLE)
                kind.cli_ns += sum(cpu_ns(pid) for pid in procfs.children_of(proc.pid)) - before
                kind.seconds += time.perf_counter() - started
                kind.runs += 1
            events: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
            for record in records:
                rid = str(record.get("request_id", ""))
                if record.get("event") in ("cli_control", "cli_tools_listed") and rid.startswith(f"k{number}-"):
                    events[rid.split("-follow-up")[0]].append(record)
            out.kinds.append((kind, events))
        proc.terminate()
        async with asyncio.timeout(60):
            await proc.wait()
    return out


def report(table: Table) -> None:
    print("\nControl requests around each turn (2 workers, one request at a time; per request):")
    print(
        "| turn kind | n | control requests (count each) | control ms | control CLI CPU ms (main thread) |"
        " tools relisted ms |"
        " CLI CPU ms (whole request) | ... less 2 idle workers' | TTFT p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, events in table.kinds:
        counts: collections.Counter[str] = collections.Counter()
        ms = cpu = relist = 0.0
        for record in (r for rid in kind.ids for r in events.get(rid, [])):
            if record["event"] == "cli_tools_listed":
                relist += record["ms"]
                continue
            counts[record["subtype"]] += 1
            ms += record["ms"]
            cpu += record["cli_cpu_ms"]
        n = kind.runs
        named = ", ".join(f"{name} {count / n:g}" for name, count in sorted(counts.items())) or "none"
        print(
            f"| {kind.name} | {n} | {named} | {ms / n:.1f} | {cpu / n:.1f} | {relist / n:.1f} |"
            f" {kind.cli_ns / n / 1e6:.1f} | {(kind.cli_ns / 1e6 - 2 * table.idle_ms_per_s * kind.seconds) / n:.1f} |"
            f" {statistics.median(kind.ttfts) * 1000:.1f} |"
        )
    print(f"an idle worker (holding a conversation) costs {table.idle_ms_per_s:.2f} ms of CLI CPU per second")
