"""What the CLI says about itself at start-up, without spending a request: its version and where its credentials
come from (an `initialize` control request answers both). `/health` shows it, so a user sees at once when the CLI is
missing, is not the pinned version, is not logged in at all (no token source and no API key: every turn would end
"Not logged in"), or bills an `ANTHROPIC_API_KEY` found in the daemon's environment instead of the subscription login.
Whether it is logged in is kept up to date by the turns: a "Not logged in" answer marks it so, a later answer clears it.
The same process is asked `list_models` (its aliases and the model ids they resolve to, answered locally in ~15 ms:
measured, no upstream request), which the model catalogue serves beside the configured names.
"""

from __future__ import annotations

import msgspec
import structlog

from maxproxy import errors
from maxproxy.claude.worker import Worker
from maxproxy.settings import PINNED_CLI_VERSION, Settings

log = structlog.get_logger("maxproxy.probe")


class CliModel(msgspec.Struct, frozen=True, rename="camel"):
    """One entry of the CLI's `list_models` answer (the fields maxproxy uses; the rest, such as effort support, is
    ignored)."""

    value: str  # the alias `--model` takes: "default", "opus", "fable", ...
    resolved_model: str | None = None  # the model id it stands for now, e.g. "claude-opus-5-5"
    display_name: str = ""
    description: str = ""


class CliStatus(msgspec.Struct):
    path: str
    found: bool = False
    version: str | None = None
    pinned_version: str = PINNED_CLI_VERSION
    api_key_source: str | None = None  # e.g. "ANTHROPIC_API_KEY": requests are billed to that key
    token_source: str | None = None  # e.g. "CLAUDE_CODE_OAUTH_TOKEN" or the stored subscription login
    subscription_type: str | None = None  # e.g. "Claude Max": a stored subscription login (`claude auth login`)
    error: str | None = None
    logged_in: bool | None = None  # None: the CLI did not say
    models: list[CliModel] = []  # its `list_models` answer (empty: not available)
    models_error: str | None = None  # why there is none

    @property
    def billing(self) -> str:
        """What answers are billed to, as far as the CLI has shown: never a subscription it has not seen."""
        if _named(self.api_key_source):
            return "api_key"
        if self.logged_in is False:
            return "none"
        if _named(self.token_source) or self.subscription_type:
            return "subscription"
        return "unknown"

    def problem(self) -> str | None:
        """Why no request can be answered, with the fix; None when nothing is known to be wrong."""
        if not self.found or self.error is not None:
            return f"CLI: {self.error or 'not found'}"
        if self.logged_in is False:
            return f"CLI: not logged in; {errors.login_fix(self.path)}"
        return None


def _named(source: str | None) -> bool:
    return bool(source) and source != "none"


async def probe(settings: Settings) -> CliStatus:
    status = CliStatus(path=settings.cli_path)
    try:
        worker = await Worker.start(settings)
    except errors.ProxyError as exc:
        status.error = exc.message
        return status
    try:
        status.models = _models(await worker.control("list_models"))
    except (errors.ProxyError, msgspec.ValidationError) as exc:
        status.models_error = exc.message if isinstance(exc, errors.ProxyError) else f"unexpected answer: {exc}"
    finally:
        await worker.close()
    if not status.models and status.models_error is None:
        status.models_error = "the CLI listed no models"
    answer = worker.info
    status.found = True
    status.version = str(answer.get("claude_code_version") or "") or None
    account = answer.get("account") or {}
    status.api_key_source = account.get("apiKeySource")
    status.token_source = account.get("tokenSource")
    status.subscription_type = account.get("subscriptionType")
    # Measured (2.1.328): `CLAUDE_CODE_OAUTH_TOKEN` gives `tokenSource`, a stored login `subscriptionType`, an API key
    # `apiKeySource`; with none of them `tokenSource` is "none" and every turn ends "Not logged in". (Bedrock and
    # Vertex authenticate otherwise: not judged here.)
    if _named(status.token_source) or _named(status.api_key_source) or status.subscription_type:
        status.logged_in = True
    elif status.token_source is not None and account.get("apiProvider") in (None, "firstParty"):  # i.e. "none"
        status.logged_in = False
    return status


def _models(answer: dict[str, object]) -> list[CliModel]:
    return msgspec.convert(answer.get("models") or [], list[CliModel])
