"""The model catalogue: the CLI's recorded `list_models` answer merged with the configured names."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from maxproxy.catalog import Catalog, from_cli, merge
from maxproxy.claude.probe import CliModel
from maxproxy.settings import DEFAULT_MODELS, Model, Settings

FIXTURE = Path(__file__).parent / "fixtures" / "cli" / "control_list_models_response.json"


@pytest.fixture
def listed() -> list[CliModel]:
    answer = json.loads(FIXTURE.read_text())["response"]["response"]
    return msgspec.convert(answer["models"], list[CliModel])


def test_every_alias_and_resolved_id_is_served(listed: list[CliModel]) -> None:
    table = from_cli(listed)
    assert list(table) == [
        "default",
        "opus",
        "fable",
        "sonnet",
        "haiku",
        "claude-opus-5-5",
        "claude-fable-5-2",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
    ]
    # Each served name maps to a `--model` value the CLI takes: the alias itself, or the id it sends as it is.
    assert table["claude-opus-5-5"] == Model(
        cli="claude-opus-5-5", family="opus", max_output_tokens=128_000, display_name="Claude Opus 5.5"
    )
    assert table["fable"] == Model(cli="fable", family="fable", max_output_tokens=128_000, display_name="Fable")
    assert table["default"].cli == "default"
    assert table["default"].family == "opus"
    assert table["default"].display_name == "Default (recommended)"
    assert {m.family for m in table.values()} == {"opus", "fable", "sonnet", "haiku"}


def test_configured_names_stay_and_the_users_own_win(listed: list[CliModel]) -> None:
    mine = Model(cli="claude-opus-5-5", family="opus", max_output_tokens=1_000, display_name="Mine")
    table = merge(Settings(models={"claude-opus-5-5": mine, "house": Model(cli="sonnet")}), listed)
    for name in ("claude-opus-4", "claude-sonnet-4", "claude-haiku-4", *DEFAULT_MODELS):
        assert name in table
    assert table["claude-sonnet-4-20250514"] == DEFAULT_MODELS["claude-sonnet-4-20250514"]  # pinned ids unchanged
    assert table["claude-opus-5-5"] is mine
    assert table["house"].cli == "sonnet"
    assert table["opus"].display_name == "Opus"  # the CLI knows the alias's name


def test_an_older_resolved_id_keeps_the_tables_limit() -> None:
    table = from_cli([CliModel(value="haiku", resolved_model="claude-haiku-4-5", display_name="Haiku")])
    assert table["claude-haiku-4-5"].max_output_tokens == 64_000
    assert table["claude-haiku-4-5"].display_name == "Claude Haiku 4.5"


def test_the_catalogue_is_the_configured_table_until_it_learns(listed: list[CliModel]) -> None:
    settings = Settings(models={"house": Model(cli="sonnet")})
    catalog = Catalog(settings)
    assert dict(catalog) == settings.model_table
    assert catalog.source == "configured"
    assert "claude-opus-5-5" not in catalog
    catalog.learn(listed)
    assert catalog.source == "cli"
    assert catalog["claude-opus-5-5"].cli == "claude-opus-5-5"
    assert "house" in catalog
    assert "claude-opus-4" in catalog
