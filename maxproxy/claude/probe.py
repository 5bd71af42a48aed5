"""What the CLI says about itself at start-up, without spending a request: its version and where its credentials
come from (an `initialize` control request answers both). `/health` shows it, so a user sees at once when the CLI is
missing, is not the pinned version, or bills an `ANTHROPIC_API_KEY` found in the daemon's environment instead of the
subscription login.
"""

from __future__ import annotations

import msgspec
import structlog

from maxproxy import errors
from maxproxy.claude.worker import Worker
from maxproxy.settings import PINNED_CLI_VERSION, Settings

log = structlog.get_logger("maxproxy.probe")


class CliStatus(msgspec.Struct):
    path: str
    found: bool = False
    version: str | None = None
    pinned_version: str = PINNED_CLI_VERSION
    api_key_source: str | None = None  # e.g. "ANTHROPIC_API_KEY": requests are billed to that key
    token_source: str | None = None  # e.g. "CLAUDE_CODE_OAUTH_TOKEN" or the stored subscription login
    error: str | None = None

    @property
    def billing(self) -> str:
        if self.api_key_source and self.api_key_source != "none":
            return "api_key"
        return "subscription"


async def probe(settings: Settings) -> CliStatus:
    status = CliStatus(path=settings.cli_path)
    try:
        worker = await Worker.start(settings)
    except errors.ProxyError as exc:
        status.error = exc.message
        return status
    await worker.close()
    answer = worker.info
    status.found = True
    status.version = str(answer.get("claude_code_version") or "") or None
    account = answer.get("account") or {}
    status.api_key_source = account.get("apiKeySource")
    status.token_source = account.get("tokenSource")
    return status
