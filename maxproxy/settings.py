"""Settings: one frozen, validated tree built from the embedded defaults, a TOML file, `MAXPROXY_*` environment
variables and command-line flags, each overriding the one before. Nothing else in maxproxy reads the environment for
its configuration. An invalid value raises `SettingsError` with a one-line message naming the setting.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tomllib
from collections.abc import Container, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

ENV_PREFIX = "MAXPROXY_"
PINNED_CLI_VERSION = "2.1.328"
# The project-local CLI that `make install` puts next to the package (a source checkout).
PROJECT_CLI = Path(__file__).resolve().parent.parent / "node_modules" / ".bin" / "claude"

Seconds = Annotated[float, Meta(gt=0)]
NoticeKind = Literal["progress", "timeout", "crash_loop", "breaker", "plan", "lifecycle"]
Count = Annotated[int, Meta(ge=0)]
PermissionMode = Literal["default", "acceptEdits", "plan", "dontAsk", "auto", "bypassPermissions"]
Family = Literal["opus", "sonnet", "haiku", "fable", "other"]


class SettingsError(Exception):
    """A setting is missing, malformed or unsafe; the message names it."""


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One entry of the model table: the id clients send maps to what the CLI's `--model` gets."""

    cli: str  # alias (`sonnet`) or full model id, passed to `claude --model`
    family: Family = "other"  # the per-family limits key (pool issue)
    created: int = 1747267200  # `created` in /v1/models; informational
    max_output_tokens: Annotated[int, Meta(ge=1)] = 64_000  # the most a request's `max_tokens` may ask for
    display_name: str = ""  # `display_name` in Anthropic's model list ("" = the id)


# Names the pinned CLI may list once it is asked (`catalog`): its aliases and `claude-<family>-<version>` ids. The
# settings and keys file may name them before the CLI was probed; a name no one serves is still refused there.
_CLI_NAME = re.compile(r"(?:default|best|opus|sonnet|haiku|fable|opusplan)(?:\[1m\])?|claude-[a-z]+(?:-\d+){1,3}")


def servable(name: str, served: Container[str]) -> bool:
    """`name` is served now (`served`) or is a name the CLI's own model list may add."""
    return name in served or _CLI_NAME.fullmatch(name) is not None


def family_of(name: str) -> Family:
    for family in ("opus", "sonnet", "haiku", "fable"):
        if family in name:
            return family
    return "other"


# The embedded model table. Family ids and bare aliases go to the CLI's aliases, which always name the newest model
# of the family; pinned ids go to the CLI unchanged. It is data: `[models."id"]` tables in the config add or replace
# entries.
_OUTPUT_LIMITS = {"claude-opus-4-1-20250805": 32_000, "claude-opus-4-20250514": 32_000}  # Anthropic's model table
DEFAULT_MODELS: dict[str, Model] = {
    **{f"claude-{f}-4": Model(cli=f, family=family_of(f)) for f in ("opus", "sonnet", "haiku")},
    **{f: Model(cli=f, family=family_of(f)) for f in ("opus", "sonnet", "haiku")},
    **{
        pinned: Model(cli=pinned, family=family_of(pinned), max_output_tokens=_OUTPUT_LIMITS.get(pinned, 64_000))
        for pinned in (
            "claude-opus-4-5-20251101",
            "claude-opus-4-1-20250805",
            "claude-opus-4-20250514",
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-20250514",
            "claude-haiku-4-5-20251001",
        )
    },
}


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Concurrent turns per model family (TOML `[limits]`, env `MAXPROXY_LIMIT_<FAMILY>`)."""

    opus: Annotated[int, Meta(ge=1)] = 2
    sonnet: Annotated[int, Meta(ge=1)] = 4
    haiku: Annotated[int, Meta(ge=1)] = 8
    other: Annotated[int, Meta(ge=1)] = 4

    def of(self, family: str) -> int:
        return int(getattr(self, family, self.other))


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 3456
    # Where the Claude Code CLI is; "" = the project-local CLI if present, else `claude` on PATH.
    claude_path: str = ""
    # State (workspace, later the session store); "" = $XDG_STATE_HOME/maxproxy or ~/.local/state/maxproxy.
    state_dir: str = ""
    # The CLI's working directory: a dedicated one, so its transcripts and tools stay apart from the user's own.
    workspace: str = ""
    # The CLI's own built-in tools (`--tools`): "" = none (a chat proxy), "default" = all, or "Read,Grep".
    cli_tools: str = ""
    allowed_tools: list[str] = []
    disallowed_tools: list[str] = []
    permission_mode: PermissionMode = "default"
    # Requests that bring their own `tools` get none of the CLI's built-in tools unless this is true.
    mix_cli_tools: bool = False
    # A turn that handed tool calls to its client waits this long for the results, then its worker is freed (a
    # later follow-up replays the conversation).
    tool_wait: Seconds = 600.0
    # How the client's system prompt reaches the model: "embed" (a block at the head of the first user message; the
    # CLI's own system prompt stays), "append" (--append-system-prompt) or "replace" (--system-prompt).
    system_prompt_mode: Literal["embed", "append", "replace"] = "embed"
    # A structured answer (`response_format`, `text.format`) that is not JSON for its schema is asked for again this
    # many times, on the same worker within the same turn, before the request fails (502 invalid_structured_output).
    structured_output_retries: Annotated[int, Meta(ge=0, le=5)] = 1
    inactivity_timeout: Seconds = 600.0  # no event from the CLI for this long: the turn is stopped (504)
    max_turn_seconds: Seconds = 3600.0  # hard cap on one turn
    body_limit: Annotated[int, Meta(ge=1024)] = 32 * 1024 * 1024
    # Bounded upstream behaviour of the CLI (CLAUDE_CODE_MAX_RETRIES, API_TIMEOUT_MS,
    # CLAUDE_BYTE_STREAM_IDLE_TIMEOUT_MS): a dead upstream fails in seconds, not in 15 minutes.
    upstream_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    upstream_timeout: Seconds = 120.0
    upstream_idle_timeout: Annotated[float, Meta(ge=10, le=1800)] = 90.0
    # SSE: response headers wait this long for the first token (so early errors keep their HTTP status), then
    # comment keepalives go out at this interval while the CLI is silent.
    keepalive_interval: Seconds = 15.0
    stop_step_timeout: Seconds = 3.0  # each step of stopping a CLI: stdin EOF, SIGTERM, SIGKILL
    shutdown_timeout: Seconds = 30.0  # on SIGTERM, turns in flight get this long to finish before they are stopped
    # The pool: warm CLI processes, limits and the queue.
    max_workers: Annotated[int, Meta(ge=1)] = 8  # CLI processes at most (busy + idle), and so concurrent turns
    min_idle: Count = 1  # idle warm workers kept ready for each of `warm_models`
    warm_models: list[str] = msgspec.field(default_factory=lambda: ["claude-sonnet-4"])
    limits: Limits = Limits()
    queue_max: Count = 16  # requests waiting per model family; one more gets 429
    queue_timeout: Seconds = 30.0  # a request waiting longer gets 429
    idle_timeout: Seconds = 300.0  # idle workers beyond `min_idle` are stopped after this
    worker_max_turns: Annotated[int, Meta(ge=1)] = 200  # a worker is replaced after this many turns
    worker_max_rss_mb: Count = 1024  # ... or when its memory passes this (0: no limit)
    interrupt_timeout: Seconds = 3.0  # an interrupted turn must end this fast, or its worker is killed
    # Conversations (sessions): one turn at a time each, kept in SQLite under the state directory.
    session_busy: Literal["wait", "reject"] = "wait"  # a second request on a busy conversation waits, or gets 409
    session_wait: Seconds = 60.0  # ... for at most this long, then 409
    session_ttl_days: Annotated[float, Meta(gt=0)] = 30.0  # unused this long, a conversation and its transcript go
    # The optional Telegram notifier: off unless a bot token and chat ids are set (also TELEGRAM_BOT_TOKEN and
    # TELEGRAM_NOTIFY_ID, comma-separated, as in the original proxy).
    telegram_bot_token: str = ""
    telegram_notify_ids: list[str] = []
    telegram_api_base: str = "https://api.telegram.org"
    telegram_events: list[NoticeKind] = msgspec.field(
        default_factory=lambda: ["progress", "timeout", "crash_loop", "breaker", "plan", "lifecycle"]
    )
    api_keys: list[str] = []
    # Named API keys with per-key limits (`[keys.NAME]` tables in a TOML file; README "Several bots"), reloaded on
    # SIGHUP and when the file changes.
    keys_file: str = ""
    # The subscription breaker: extra usage (billed beyond the plan) is never spent unless this is true; a limit
    # answer without a reset time keeps the breaker open this long.
    allow_extra_usage: bool = False
    breaker_seconds: Seconds = 600.0
    # The plan's state (`plan`): a window crossing one of these percentages is announced (the notifier's `plan`
    # alerts), once per window, threshold and reset; the CLI is asked for the plan's windows this often (0: at start
    # and on demand only). Asking is never a billed request.
    plan_warn_percent: list[Annotated[float, Meta(gt=0, le=100)]] = msgspec.field(default_factory=lambda: [80.0, 95.0])
    plan_refresh_interval: Annotated[float, Meta(ge=0)] = 300.0
    cors_origins: list[str] = []  # browser Origins allowed to call the API; empty = none
    models: dict[str, Model] = {}
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # --- derived values ---------------------------------------------------------------------------------------

    @property
    def model_table(self) -> dict[str, Model]:
        return {**DEFAULT_MODELS, **self.models}

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "maxproxy"

    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace).expanduser() if self.workspace else self.state_path / "workspace"

    @property
    def cli_path(self) -> str:
        if self.claude_path:
            return str(Path(self.claude_path).expanduser())
        if PROJECT_CLI.exists():
            return str(PROJECT_CLI)
        return shutil.which("claude") or "claude"

    @property
    def telegram(self) -> bool:
        """The notifier is configured."""
        return bool(self.telegram_bot_token and self.telegram_notify_ids)

    @property
    def keys_path(self) -> Path | None:
        return Path(self.keys_file).expanduser() if self.keys_file else None

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """`MAXPROXY_PORT=1` → {"port": "1"}; lists are comma-separated, tables are JSON; `MAXPROXY_LIMIT_OPUS=2` →
    {"limits": {"opus": "2"}}."""
    fields = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    out: dict[str, Any] = {}
    limits = {
        f.name: env[f"{ENV_PREFIX}LIMIT_{f.name.upper()}"]
        for f in msgspec.structs.fields(Limits)
        if f"{ENV_PREFIX}LIMIT_{f.name.upper()}" in env
    }
    if limits:
        out["limits"] = limits
    for name, kind in fields.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None or name == "limits":
            continue
        text = str(kind)
        if text.startswith("dict"):
            try:
                out[name] = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                raise SettingsError(f"invalid setting `{name}` ({ENV_PREFIX}{name.upper()}): not JSON") from None
        elif text.startswith("list"):
            out[name] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            out[name] = raw
    return out


def _file_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def default_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "maxproxy" / "config.toml"


def config_file(config: str | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The TOML file `load` reads, if any."""
    env = os.environ if env is None else env
    path = config or env.get(ENV_PREFIX + "CONFIG")
    if path:
        return Path(path).expanduser()
    default = default_config_path(env)
    return default if default.exists() else None


def load(
    config: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults < TOML file < environment < `overrides` (command-line flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file(config, env)
    if path is not None:
        values.update(_file_values(path))
    # The original proxy's names for the Telegram settings (the MAXPROXY_ ones win).
    if env.get("TELEGRAM_BOT_TOKEN"):
        values["telegram_bot_token"] = env["TELEGRAM_BOT_TOKEN"]
    if env.get("TELEGRAM_NOTIFY_ID"):
        values["telegram_notify_ids"] = [i.strip() for i in env["TELEGRAM_NOTIFY_ID"].split(",") if i.strip()]
    for key, value in _env_values(env).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}  # MAXPROXY_LIMIT_OPUS adds to a [limits] table
        else:
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    check(settings)
    return settings


def check(settings: Settings) -> None:
    """Rules that span settings; every one of them is about safety."""
    if not settings.loopback and not settings.api_keys and not settings.keys_file:
        raise SettingsError(
            f"invalid setting `host`: refusing to listen on {settings.host} without API keys "
            f"(set {ENV_PREFIX}KEYS_FILE or {ENV_PREFIX}API_KEYS, or bind 127.0.0.1)"
        )
    if any(not key.strip() for key in settings.api_keys):
        raise SettingsError("invalid setting `api_keys`: a key is empty")
    if any(origin.strip() == "*" for origin in settings.cors_origins):
        raise SettingsError("invalid setting `cors_origins`: `*` is not allowed; list the origins")
    if not settings.telegram_api_base.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise SettingsError("invalid setting `telegram_api_base`: use https:// (plain http only on loopback)")
    unknown = [m for m in settings.warm_models if not servable(m, settings.model_table)]
    if unknown:
        raise SettingsError(f"invalid setting `warm_models`: unknown model {unknown[0]!r} (see GET /v1/models)")


def _describe(exc: msgspec.ValidationError) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.port`"; we say which setting, first."""
    message = str(exc)
    where = ""
    if " - at `$." in message:
        message, _, where = message.partition(" - at `$.")
        where = where.rstrip("`")
    elif message.startswith("Object contains unknown field"):
        where = message.split("`")[1]
        return f"unknown setting `{where}`"
    return f"invalid setting `{where or '?'}`: {message}"
