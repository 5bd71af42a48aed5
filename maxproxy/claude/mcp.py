"""The SDK MCP server each worker hosts for the client's tools (protocol note §5.3: declared in `initialize`, spoken
through `mcp_message` control requests).

The CLI lists the tools (`tools/list`) and calls them (`tools/call`, which carries the model's `tool_use` id). A
call that passes the request's rules is not answered: it waits, the worker reports it as a `ToolCall` event, maxproxy
hands it to the client as an OpenAI `tool_calls` answer, and the client's follow-up request supplies the result
(`answer`), which lets the CLI's turn go on where it stopped. A call that breaks the rules is answered at once with an
error result the model reads. When a request brings other tools than the worker lists, the CLI lists them again
before the turn starts: after `notifications/tools/list_changed` when the new listing still holds every tool the CLI
has sent upstream under the server's name (the CLI keeps those for the rest of its session, whatever the listing
says: measured), otherwise under a new server name that replaces the old server (`mcp_set_servers`), so that the
upstream sees exactly the request's tools and never another request's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from maxproxy import errors, tools
from maxproxy.claude.events import ControlRequest, ToolCall, encode_line

log = structlog.get_logger("maxproxy.mcp")

PROTOCOL_FALLBACK = "2025-06-18"
RELIST_TIMEOUT = 10.0
ALLOW_AHEAD = 16  # server names allowed by one settings update


class Pending:
    """A call the CLI waits on: its control request, and its JSON-RPC id within it."""

    __slots__ = ("call", "request_id", "rpc_id")

    def __init__(self, call: ToolCall, request_id: str, rpc_id: Any) -> None:
        self.call = call
        self.request_id = request_id
        self.rpc_id = rpc_id


class ToolHost:
    def __init__(self, write: Callable[[bytes], None], report: Callable[[ToolCall], None]) -> None:
        self._write = write  # writes one stdin line (never awaits: answers go out in the order they are made)
        self._report = report  # puts a call into the worker's event stream
        self.toolset = tools.Toolset()
        self.pending: dict[str, Pending] = {}  # by tool_use id, in the order the CLI called
        self._listed: asyncio.Future[None] | None = None  # set when the CLI has listed the current tools
        self.server = tools.SERVER  # the name the CLI knows the server by; never used again once replaced
        self._servers = 0
        self._allowed = 0  # the names up to `client<_allowed>` have a permission rule (`--allowedTools` has `client`)
        self._offered: list[tools.Tool] = []  # every tool listed for a turn under this name: the CLI keeps them
        self._recorded: tuple[tools.Tool, ...] = ()

    @property
    def waiting(self) -> bool:
        """The CLI waits on calls only the client can answer."""
        return bool(self.pending)

    def handle(self, request: ControlRequest) -> None:
        """Answer one `mcp_message` from the CLI (a `tools/call` that passes the rules stays open)."""
        message = request.request.message if isinstance(request.request.message, dict) else {}
        method = message.get("method")
        rpc_id = message.get("id")
        if rpc_id is None:  # a notification: acknowledge it
            if method == "notifications/cancelled":
                self._cancelled(message.get("params") or {})
            self._respond(request.request_id, {"jsonrpc": "2.0", "result": {}})
            return
        if method == "initialize":
            params = message.get("params") or {}
            result: dict[str, Any] = {
                "protocolVersion": params.get("protocolVersion") or PROTOCOL_FALLBACK,
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "maxproxy", "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": self.toolset.listing()}
            if self._listed is not None and not self._listed.done():
                self._listed.set_result(None)
        elif method == "ping":
            result = {}
        elif method == "tools/call":
            self._call(request.request_id, rpc_id, message.get("params") or {})
            return
        else:
            self._respond(
                request.request_id,
                {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": -32601, "message": f"{method} is not supported"}},
            )
            return
        self._respond(request.request_id, {"jsonrpc": "2.0", "id": rpc_id, "result": result})

    def _call(self, request_id: str, rpc_id: Any, params: dict[str, Any]) -> None:
        name = str(params.get("name", ""))
        arguments = params.get("arguments", {})
        meta = params.get("_meta") or {}
        tool_use_id = str(meta.get("claudecode/toolUseId") or f"rpc{rpc_id}")
        try:
            refusal = self.toolset.refusal(name, arguments, accepted=len(self.pending))
        except Exception as exc:  # the CLI must get an answer whatever happens, or its turn hangs
            log.exception("tool_call_check_failed", tool=name)
            refusal = f"maxproxy could not check this call ({type(exc).__name__}); try again"
        call = ToolCall(
            tool_use_id=tool_use_id,
            id=tools.call_id(tool_use_id),
            name=name,
            arguments=tools.arguments_json(arguments),
            refusal=refusal,
        )
        if refusal is not None:
            log.info("tool_call_refused", tool=name, reason=refusal)
            self._result(request_id, rpc_id, refusal, is_error=True)
        else:
            self.pending[tool_use_id] = Pending(call, request_id, rpc_id)
        self._report(call)

    def _cancelled(self, params: dict[str, Any]) -> None:
        # The CLI gave up on a call (its turn was interrupted, or it timed out): nothing will take the answer.
        rpc_id = params.get("requestId")
        for key, pending in list(self.pending.items()):
            if pending.rpc_id == rpc_id:
                del self.pending[key]

    def answer(self, results: dict[str, str]) -> None:
        """Give the waiting calls their results (by the id the client saw), which lets the turn go on."""
        missing = [p.call.id for p in self.pending.values() if p.call.id not in results]
        if missing:
            raise errors.InvalidRequest(f"No tool result for the tool call(s) {', '.join(missing)}", param="messages")
        for key, pending in list(self.pending.items()):
            del self.pending[key]
            self._result(pending.request_id, pending.rpc_id, tools.result_text(results[pending.call.id]))

    def matches(self, results: dict[str, str]) -> bool:
        """Whether these results are exactly for the calls that wait."""
        return bool(self.pending) and {p.call.id for p in self.pending.values()} == set(results)

    def _result(self, request_id: str, rpc_id: Any, text: str, *, is_error: bool = False) -> None:
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
        if is_error:
            result["isError"] = True
        self._respond(request_id, {"jsonrpc": "2.0", "id": rpc_id, "result": result})

    def _respond(self, request_id: str, mcp_response: dict[str, Any]) -> None:
        answer = {"subtype": "success", "request_id": request_id, "response": {"mcp_response": mcp_response}}
        try:
            self._write(encode_line({"type": "control_response", "response": answer}))
        except errors.ProxyError:
            pass  # the process is gone; whoever waits on its turn learns that from its events

    def offer(self, toolset: tools.Toolset) -> asyncio.Future[None] | None:
        """Make `toolset` what the CLI lists for the next turn. Returns a future that is done once the CLI has listed
        it again, or None when nothing changed; the caller tells the CLI (see `needs_server`) and waits."""
        if toolset.lists_like(self.toolset):
            self.toolset = toolset  # the same listing; the choice may differ
            return None
        self.toolset = toolset
        if self._listed is not None and not self._listed.done():
            self._listed.cancel()  # an earlier change that was never listed: this one replaces it
        self._listed = asyncio.get_running_loop().create_future()
        return self._listed

    @property
    def needs_server(self) -> bool:
        """Whether the current listing drops or changes a tool the CLI may have sent upstream under this name: a
        `list_changed` would leave that tool in every later request of the process (measured), so only a new server
        gives the CLI exactly this listing."""
        return any(tool not in self.toolset.tools for tool in self._offered)

    def listed_for_turn(self) -> None:
        """The current listing goes to a turn: the CLI will keep its tools under this name."""
        if self.toolset.tools is not self._recorded:  # agents send the same tools every time: nothing new then
            self._recorded = self.toolset.tools
            self._offered += [tool for tool in self.toolset.tools if tool not in self._offered]

    def replace_server(self) -> tuple[str, list[str] | None]:
        """A new name for the server (the caller registers it in place of the old one; nothing is offered under it
        yet), and the permission rules the CLI must get first when that name has none yet. A rule costs a settings
        update (~18 ms against ~4 ms for the new server: measured), so each update allows the next few names too."""
        self._servers += 1
        self.server = f"{tools.SERVER}{self._servers}"
        self._offered, self._recorded = [], ()
        if self._servers <= self._allowed:
            return self.server, None
        self._allowed = self._servers + ALLOW_AHEAD - 1
        return self.server, [f"mcp__{tools.SERVER}{n}" for n in range(self._servers, self._allowed + 1)]
