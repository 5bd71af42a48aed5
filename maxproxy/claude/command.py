"""How a CLI worker is started and set up: the argv and environment for one `claude` process, from the settings
and a `Launch` (what is fixed for the process's life: model, and the system prompt in the "append"/"replace" modes),
and the per-turn `Options` (output limit, effort) that a warm process takes through `apply_flag_settings`. No prompt
text ever goes on argv, only flags; the child inherits the server's environment (minus `CLAUDECODE`, which would make
the CLI think it runs inside another Claude Code session) plus bounded upstream retry and timeout limits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from maxproxy import tools
from maxproxy.settings import Settings


class Launch(msgspec.Struct, frozen=True):
    """What a worker process is fixed to for its whole life (the pool keys warm workers by it)."""

    model: str  # `--model`
    system_prompt: str | None = None  # only in the "append"/"replace" system prompt modes
    cli_tools: str | None = None  # `--tools`, when not the settings' `cli_tools` (off for requests with tools)


class Options(msgspec.Struct, frozen=True):
    """Per-turn settings a warm process takes at run time (measured: `apply_flag_settings`, and null resets)."""

    max_output_tokens: int | None = None  # upstream `max_tokens`, via the CLI's CLAUDE_CODE_MAX_OUTPUT_TOKENS
    effort: str | None = None  # low, medium, high, xhigh, max

    def flag_settings(self) -> dict[str, object]:
        limit = None if self.max_output_tokens is None else str(self.max_output_tokens)
        return {"env": {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": limit}, "effortLevel": self.effort}


def argv(settings: Settings, launch: Launch | None, *, resume: str | None = None) -> list[str]:
    args = [
        settings.cli_path,
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        # Only MCP servers maxproxy declares; never the user's own, which could expose tools to API clients.
        "--strict-mcp-config",
        "--permission-mode",
        settings.permission_mode,
        "--tools",
        launch.cli_tools if launch is not None and launch.cli_tools is not None else settings.cli_tools,
        # The client's tools (maxproxy's SDK MCP server) run at the client: the CLI must not ask for permission.
        "--allowedTools",
        ",".join([f"mcp__{tools.SERVER}", *settings.allowed_tools]),
    ]
    if settings.disallowed_tools:
        args += ["--disallowedTools", ",".join(settings.disallowed_tools)]
    if launch is not None:
        args += ["--model", launch.model]
    if resume is not None:
        args += ["--resume", resume]  # a session id maxproxy recorded: a UUID, never client text
    # A system prompt of the "append"/"replace" modes goes in the `initialize` request on stdin, not on argv.
    return args


def initialize_request(settings: Settings, launch: Launch | None) -> dict[str, object]:
    """The fields of the `initialize` control request: the SDK MCP server that hosts the client's tools, and the
    process's system prompt."""
    fields: dict[str, object] = {
        "sdkMcpServers": [tools.SERVER],
        "sdkMcpServerConfigs": {tools.SERVER: server_config(settings)},
    }
    if launch is not None and launch.system_prompt is not None:
        key = "systemPrompt" if settings.system_prompt_mode == "replace" else "appendSystemPrompt"
        fields[key] = [launch.system_prompt] if key == "systemPrompt" else launch.system_prompt
    return fields


def server_config(settings: Settings) -> dict[str, object]:
    """How the CLI treats the calls of the client's tool server (in `initialize`, and for each server that replaces
    it through `mcp_set_servers`, which takes the same fields)."""
    return {
        # maxproxy's own `tool_wait` ends a wait; the CLI's timeout (in ms) only backs it up.
        "timeout": int((settings.tool_wait + 60) * 1000),
        # A call waits on the client, however long: never moved to a background task.
        "disableAutoBackground": True,
    }


def environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.pop("CLAUDECODE", None)
    env.update(
        CLAUDE_CODE_MAX_RETRIES=str(settings.upstream_retries),
        API_TIMEOUT_MS=str(int(settings.upstream_timeout * 1000)),
        CLAUDE_BYTE_STREAM_IDLE_TIMEOUT_MS=str(int(settings.upstream_idle_timeout * 1000)),
        # The pinned CLI must stay the pinned CLI.
        DISABLE_AUTOUPDATER="1",
        # The client's tools keep their own names (not `mcp__client__<name>`).
        CLAUDE_AGENT_SDK_MCP_NO_PREFIX="1",
        # ... and are sent to the model as they are, never deferred behind the CLI's tool search (measured: tools
        # listed after start-up otherwise come with a `DeferredToolPlaceholder`).
        ENABLE_TOOL_SEARCH="false",
        # No idle full collections by the Bun runtime (after 10 s, 2 min and 10 min without heap growth): each cost a
        # warm worker ~110-230 ms of CPU on its GC threads, and they fire between a pool's turns, to give back only
        # 3-8 MB of its ~200 MB RSS. Measured (`python -m maxproxy.bench.runtime`): idle CPU in the 15 s after turns
        # 14 -> 5 ms/s per worker, warm TTFT and CPU per turn within noise.
        BUN_IDLE_GC_SECONDS="0",
    )
    return env
