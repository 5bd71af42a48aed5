"""The optional Telegram notifier: live progress of the tools a request runs, and alerts. It subscribes to the event
bus (tool events, turn ends and alerts only) and never sits in a request's path: its queue is bounded (items beyond
it are dropped and counted), and Telegram being slow, failing or unreachable only delays or loses notices.

Progress: one message per request that runs tools, sent at its first tool use and then edited as tools start and
finish — the tool's name and a short, safe summary of its input (a shell command cut to one line with anything that
looks like a secret masked, a file path, a search pattern; never file contents) — and finally the outcome and the
duration. Edits of one message are at most one per second. Alerts (watchdog timeouts, workers that keep failing to
start, the subscription breaker, start-up and shutdown) are sent once, and the same alert again only after a minute.
Every message names the API key (which bot) and the model. `telegram_events` picks what is sent.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from maxproxy.bus import Alert, Bus, TurnEnd, TurnRef
from maxproxy.claude.events import Assistant, StreamEvent, ToolCall, TurnEvent, User
from maxproxy.settings import Settings
from maxproxy.telegram import Telegram

log = structlog.get_logger("maxproxy.notifier")

EDIT_EVERY = 1.0  # seconds between edits of one message
ALERT_AGAIN = 60.0  # the same alert is not repeated sooner
QUEUE = 256
SUMMARY = 80  # characters of a tool's input summary
_SECRET = re.compile(
    r"(?i)(bearer\s+\S+|(?:api[_-]?key|token|secret|password|passwd|pwd)[=:]\s*\S+|sk-[A-Za-z0-9_-]{8,}"
    r"|[A-Za-z0-9+/_-]{32,})"
)


def wanted(item: TurnEvent | TurnEnd) -> bool:
    """The bus items the notifier reads: tool uses, tool results, client tool calls, turn ends."""
    if isinstance(item, TurnEnd | ToolCall):
        return True
    if isinstance(item, StreamEvent):
        block = item.event.content_block
        return item.event.type == "content_block_start" and block is not None and block.type == "tool_use"
    if isinstance(item, Assistant | User):
        content = item.message.content
        return not isinstance(content, str) and any(b.type in ("tool_use", "tool_result") for b in content)
    return False


def mask(text: str) -> str:
    return _SECRET.sub("…", text)


def summary(name: str, arguments: Any) -> str:
    """A short, safe line for a tool's input: what it acts on, never what it writes."""
    if not isinstance(arguments, dict):
        return ""
    if "command" in arguments:
        value = str(arguments["command"]).strip().splitlines()
        text = value[0] if value else ""
    elif "file_path" in arguments or "path" in arguments or "notebook_path" in arguments:
        text = str(arguments.get("file_path") or arguments.get("path") or arguments.get("notebook_path"))
    elif "pattern" in arguments:
        text = str(arguments["pattern"])
    elif "url" in arguments:
        text = str(arguments["url"]).split("?")[0]
    else:
        return ""
    text = mask(text)
    return text if len(text) <= SUMMARY else text[: SUMMARY - 1] + "…"


@dataclass
class _Tool:
    name: str
    detail: str = ""
    state: str = "running"  # running, done, failed, client (handed to the client)


@dataclass
class _Progress:
    ref: TurnRef
    started: float = field(default_factory=time.monotonic)
    tools: dict[str, _Tool] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)  # chat id → message id
    outcome: str | None = None
    seconds: float = 0.0
    dirty: bool = True
    last_sent: float = 0.0

    def text(self) -> str:
        marks = {"running": "▶", "done": "✓", "failed": "✗", "client": "↗"}
        who = self.ref.key or "local"
        lines = [f"🔧 {who} · {self.ref.model}"]
        for tool in self.tools.values():
            lines.append(f"{marks[tool.state]} {tool.name}" + (f": {tool.detail}" if tool.detail else ""))
        if self.outcome is not None:
            lines.append(f"{_OUTCOMES.get(self.outcome, self.outcome)} in {self.seconds:.1f}s")
        return "\n".join(lines)


_OUTCOMES = {
    "ok": "Done",
    "tool_calls": "Handed tool calls to the client",
    "error": "Failed",
    "interrupted": "Interrupted",
    "killed": "Stopped",
}


class Notifier:
    def __init__(self, settings: Settings, bus: Bus, telegram: Telegram) -> None:
        self.settings = settings
        self.bus = bus
        self.telegram = telegram
        self.kinds = set(settings.telegram_events)
        self._progress: dict[str, _Progress] = {}
        self._alerts: collections.deque[Alert] = collections.deque(maxlen=32)
        self._alerted: dict[tuple[str, str], float] = {}
        self._subscription = bus.subscribe(QUEUE, accept=wanted)

    async def run(self) -> None:
        """Read the bus and send; runs until cancelled."""
        try:
            while True:
                try:
                    entry = await asyncio.wait_for(self._subscription.queue.get(), self._due())
                except TimeoutError:
                    entry = None
                if entry is not None:
                    self._take(entry)
                await self._send()
        finally:
            self._subscription.close()

    async def say(self, alert: Alert, timeout: float) -> None:
        """Send one alert now (start-up, shutdown), bounded in time."""
        if alert.kind in self.kinds:
            self._alerts.append(alert)
            try:
                async with asyncio.timeout(timeout):
                    await self._send_alerts()
            except TimeoutError:
                log.warning("telegram_slow", alert=alert.kind)

    def _due(self) -> float | None:
        """How long to wait for the next item before an edit is due (None: no edit pending)."""
        pending = [p.last_sent + EDIT_EVERY for p in self._progress.values() if p.dirty and p.messages]
        if not pending:
            return None
        return max(0.0, min(pending) - time.monotonic())

    def _take(self, entry: tuple[TurnRef, TurnEvent | TurnEnd] | Alert) -> None:
        if isinstance(entry, Alert):
            if entry.kind in self.kinds:
                self._alerts.append(entry)
            return
        if "progress" not in self.kinds:
            return
        ref, item = entry
        progress = self._progress.get(ref.turn_id)
        if isinstance(item, TurnEnd):
            if progress is not None:
                progress.outcome, progress.seconds, progress.dirty = item.outcome, item.seconds, True
            return
        if isinstance(item, StreamEvent) and item.parent_tool_use_id is None:
            block = item.event.content_block
            if block is not None and block.id:
                progress = progress or self._progress.setdefault(ref.turn_id, _Progress(ref))
                progress.tools.setdefault(block.id, _Tool(name=block.name or "tool"))
                progress.dirty = True
        elif isinstance(item, Assistant) and item.parent_tool_use_id is None and progress is not None:
            for block in item.message.content if not isinstance(item.message.content, str) else []:
                if block.type == "tool_use" and block.id:
                    tool = progress.tools.setdefault(block.id, _Tool(name=block.name or "tool"))
                    tool.detail = summary(tool.name, block.input)
                    progress.dirty = True
        elif isinstance(item, User) and progress is not None:
            for block in item.message.content if not isinstance(item.message.content, str) else []:
                result_of = progress.tools.get(block.tool_use_id or "")
                if block.type == "tool_result" and result_of is not None and result_of.state == "running":
                    result_of.state = "failed" if block.is_error else "done"
                    progress.dirty = True
        elif isinstance(item, ToolCall) and progress is not None:
            called = progress.tools.get(item.tool_use_id)
            if called is not None:
                called.state = "failed" if item.refusal else "client"
                progress.dirty = True

    async def _send(self) -> None:
        await self._send_alerts()
        now = time.monotonic()
        for turn_id, progress in list(self._progress.items()):
            if now - progress.started > self.settings.max_turn_seconds + 60:
                del self._progress[turn_id]  # its turn's end was never seen (dropped): forget it
        for turn_id, progress in list(self._progress.items()):
            if not progress.dirty:
                continue
            if progress.messages and now - progress.last_sent < EDIT_EVERY:
                continue  # coalesced: the next edit carries this change too
            progress.dirty = False
            progress.last_sent = now
            text = progress.text()
            for chat in self.settings.telegram_notify_ids:
                if chat in progress.messages:
                    await self.telegram.edit(chat, progress.messages[chat], text)
                else:
                    message = await self.telegram.send(chat, text)
                    if message is not None:
                        progress.messages[chat] = message
            if progress.outcome is not None:
                del self._progress[turn_id]

    async def _send_alerts(self) -> None:
        while self._alerts:
            alert = self._alerts.popleft()
            now = time.monotonic()
            seen = (alert.kind, alert.text)
            if now - self._alerted.get(seen, -ALERT_AGAIN) < ALERT_AGAIN:
                continue
            self._alerted[seen] = now
            for key in [k for k, at in self._alerted.items() if now - at >= ALERT_AGAIN]:
                del self._alerted[key]
            for chat in self.settings.telegram_notify_ids:
                await self.telegram.send(chat, f"⚠️ maxproxy: {alert.text}")
