"""The model catalogue: every model name maxproxy serves, and what each one means to the CLI — the one table that
`GET /v1/models` lists and `prompt.build` resolves a request's `model` in. It starts as the configured table (the
embedded `DEFAULT_MODELS` and the user's `models`) and, once the CLI was probed, takes in the CLI's own `list_models`
answer: each alias (`default`, `opus`, `fable`, ...) and each id an alias resolves to (`claude-opus-5-5`, ...) becomes a
served name, so the list follows the pinned CLI when it moves on. The user's `models` still win over both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from maxproxy.claude.probe import CliModel
from maxproxy.settings import DEFAULT_MODELS, Model, Settings, family_of

# A model id the CLI passes upstream unchanged: `claude-<family>-<major>-<minor>`; the 5.x models it lists are sent
# with `max_tokens: 128000` (measured, protocol note §9), older ones keep the table's default.
_ID = re.compile(r"claude-(?P<family>[a-z]+)-(?P<major>\d+)-(?P<minor>\d+)")
_CLI_OUTPUT_LIMIT = 128_000


def from_cli(models: Sequence[CliModel]) -> dict[str, Model]:
    """The served names the CLI's `list_models` answer gives: its aliases, then the ids they resolve to."""
    aliases: dict[str, Model] = {}
    ids: dict[str, Model] = {}
    for entry in models:
        resolved = entry.resolved_model or entry.value
        limit = _output_limit(resolved)
        aliases[entry.value] = Model(
            cli=entry.value,
            family=family_of(resolved),
            max_output_tokens=limit,
            display_name=entry.display_name or entry.value,
        )
        if entry.resolved_model and entry.resolved_model not in ids:
            ids[entry.resolved_model] = Model(
                cli=entry.resolved_model,  # measured: the CLI sends a listed id upstream as it is
                family=family_of(entry.resolved_model),
                max_output_tokens=limit,
                display_name=_display_name(entry.resolved_model),
            )
    return {**aliases, **ids}


def merge(settings: Settings, models: Sequence[CliModel]) -> dict[str, Model]:
    """The served table: the embedded names, then the CLI's (which know their display names and limits), then the
    user's own `models`, which win."""
    return {**DEFAULT_MODELS, **from_cli(models), **settings.models}


def _output_limit(model_id: str) -> int:
    match = _ID.fullmatch(model_id)
    if match is not None and int(match["major"]) >= 5:
        return _CLI_OUTPUT_LIMIT
    known = DEFAULT_MODELS.get(model_id)
    return (known or Model(cli=model_id)).max_output_tokens


def _display_name(model_id: str) -> str:
    """`claude-opus-5-5` → "Claude Opus 5.5" (an id of another form is its own name)."""
    match = _ID.fullmatch(model_id)
    if match is None:
        return model_id
    return f"Claude {match['family'].title()} {match['major']}.{match['minor']}"


class Catalog(Mapping[str, Model]):
    """The served model table (app state): the configured one until `learn` takes in the CLI's list."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._table: dict[str, Model] = settings.model_table
        self.source = "configured"  # or "cli": the CLI's list is in it

    def learn(self, models: Sequence[CliModel]) -> None:
        self._table = merge(self.settings, models)
        self.source = "cli"

    def __getitem__(self, name: str) -> Model:
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)
