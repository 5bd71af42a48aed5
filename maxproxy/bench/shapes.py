"""What the bench's clients send: the plain "hi" request, the weather tool of the function-calling cases, and an
OpenClaw-shaped conversation (docs/clients.md, /work/shared/clients.md: a 26 k-character system prompt first, 12
function tools, every call streamed with usage, `tool_choice: "auto"` and `max_completion_tokens` at the model's
limit, a timestamped user message, and an internal-context user message that is always last and gone from its place
in the next request; a stable `prompt_cache_key` of the form `<sessionId>:0`). Deterministic, so runs compare.
"""

from __future__ import annotations

from typing import Any

from maxproxy.conversation import CONTEXT_BEGIN, CONTEXT_END

MODEL = "claude-sonnet-4"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

SYSTEM_CHARS = 26_000
_RULE = (
    "Rule {n}. When the user asks for work in the workspace, read the files involved before changing them, keep "
    "edits small and reversible, say which tool you used and why, and never run a command that leaves the sandbox "
    "or touches credentials. Prefer the dedicated tools (read, edit, write, ls) over exec for files. "
)


def _system() -> str:
    head = "You are a personal assistant running inside OpenClaw. Tooling, workspace and safety rules follow.\n\n"
    rules: list[str] = []
    while len(head) + sum(len(rule) for rule in rules) < SYSTEM_CHARS:
        rules.append(_RULE.format(n=len(rules) + 1))
    return (head + "".join(rules))[:SYSTEM_CHARS]


SYSTEM = _system()


def _tool(name: str, description: str, properties: dict[str, str]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {key: {"type": kind} for key, kind in properties.items()},
        "required": list(properties)[:1],
    }
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


OPENCLAW_TOOLS = [
    _tool("apply_patch", "Apply a unified diff to files in the workspace", {"patch": "string"}),
    _tool("edit", "Replace an exact string in a file", {"path": "string", "old": "string", "new": "string"}),
    _tool("exec", "Run a shell command in the workspace", {"command": "string", "timeout": "integer"}),
    _tool("ls", "List a directory", {"path": "string"}),
    _tool("process", "Inspect or stop a background process", {"pid": "integer", "action": "string"}),
    _tool("read", "Read a file, optionally a line range", {"path": "string", "offset": "integer", "limit": "integer"}),
    _tool("sessions_yield", "Yield the turn to another session", {"session": "string"}),
    _tool("tool_call", "Call a tool found by tool_search", {"name": "string", "arguments": "object"}),
    _tool("tool_describe", "Describe a tool found by tool_search", {"name": "string"}),
    _tool("tool_search", "Search the tool catalog", {"query": "string"}),
    _tool("view_image", "Look at an image file", {"path": "string"}),
    _tool("write", "Write a whole file", {"path": "string", "content": "string"}),
]


def openclaw_body(history: list[dict[str, Any]], turn: int, key: str) -> dict[str, Any]:
    """The request of `turn` (1-based): the system prompt, the conversation so far (user and assistant messages),
    the turn's user message, and its internal-context message last (never kept in `history`)."""
    stamp = f"[Tue 2026-12-01 11:{turn:02d} UTC] "
    text = f"Step {turn}: summarise what the notes in the workspace say about item {turn}."
    if turn == 1:
        text = f"Runtime: agent=main | session=agent:main:{key}\n{text}"
    context = f"{CONTEXT_BEGIN}\nturn={turn} cwd=/workspace open_files=notes.md\n{CONTEXT_END}"
    messages = [
        {"role": "system", "content": SYSTEM},
        *history,
        {"role": "user", "content": stamp + text},
        {"role": "user", "content": [{"type": "text", "text": context}]},
    ]
    return {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": OPENCLAW_TOOLS,
        "tool_choice": "auto",
        "max_completion_tokens": 8192,
        "prompt_cache_key": f"{key}:0",
    }
