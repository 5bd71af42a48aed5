"""Settings: defaults < TOML < environment < flags; invalid values stop start-up naming the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from maxproxy.settings import PROJECT_CLI, Settings, SettingsError, load


def test_defaults_are_safe(tmp_path: Path) -> None:
    settings = load(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert (settings.host, settings.port) == ("127.0.0.1", 3456)
    assert settings.permission_mode == "default"
    assert settings.cli_tools == ""
    assert settings.api_keys == []
    assert settings.cors_origins == []
    assert settings.inactivity_timeout == 600
    assert settings.body_limit == 32 * 1024 * 1024
    assert settings.cli_path == str(PROJECT_CLI)


def test_precedence_toml_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "maxproxy.toml"
    config.write_text(
        'port = 4000\nlog_level = "debug"\ncli_tools = "Read"\n'
        '[models."my-sonnet"]\ncli = "claude-sonnet-4-5"\nfamily = "sonnet"\n'
    )
    env = {"MAXPROXY_PORT": "5000", "MAXPROXY_API_KEYS": "a, b", "MAXPROXY_INACTIVITY_TIMEOUT": "2.5"}
    settings = load(str(config), env=env, port=6000)
    assert settings.port == 6000
    assert settings.log_level == "debug"
    assert settings.cli_tools == "Read"
    assert settings.api_keys == ["a", "b"]
    assert settings.inactivity_timeout == 2.5
    table = settings.model_table
    assert table["my-sonnet"].cli == "claude-sonnet-4-5"
    assert table["claude-opus-4"].cli == "opus"  # the embedded table stays


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("port = 4001\n")
    assert load(env={"MAXPROXY_CONFIG": str(config)}).port == 4001


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MAXPROXY_PORT": "eighty"}, "`port`"),
        ({"MAXPROXY_PORT": "70000"}, "`port`"),
        ({"MAXPROXY_PERMISSION_MODE": "yolo"}, "`permission_mode`"),
        ({"MAXPROXY_INACTIVITY_TIMEOUT": "0"}, "`inactivity_timeout`"),
        ({"MAXPROXY_MODELS": "{not json"}, "`models`"),
        (
            {"MAXPROXY_MODELS": '{"x": {"cli": "opus", "colour": "red"}}'},
            "`models[...]`: Object contains unknown field `colour`",
        ),
        ({"MAXPROXY_HOST": "0.0.0.0"}, "`host`"),
        ({"MAXPROXY_CORS_ORIGINS": "*"}, "`cors_origins`"),
        ({"MAXPROXY_WARM_MODELS": "gpt-4o"}, "`warm_models`"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], fragment: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env={"XDG_CONFIG_HOME": str(tmp_path), **env})
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting `prot`"):
        load(str(config), env={})


def test_non_loopback_bind_needs_api_keys(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    with pytest.raises(SettingsError, match="without API keys"):
        load(env=env, host="0.0.0.0")
    assert load(env={**env, "MAXPROXY_API_KEYS": "k"}, host="0.0.0.0").host == "0.0.0.0"
    assert load(env=env, host="::1").loopback
    assert load(env=env, host="localhost").loopback


def test_paths_derive_from_the_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path / "s"))
    assert settings.workspace_path == tmp_path / "s" / "workspace"
    assert Settings(workspace="/w").workspace_path == Path("/w")
    assert Settings(claude_path="/opt/claude").cli_path == "/opt/claude"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maxproxy", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_command_line_stops_with_one_line_on_a_bad_setting(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MAXPROXY_PORT": "nope"}
    done = run_cli(env=env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "`port`" in done.stderr
    refused = run_cli("--host", "0.0.0.0", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert refused.returncode == 2
    assert "without API keys" in refused.stderr


def test_warm_models_may_name_what_the_cli_will_list(tmp_path: Path) -> None:
    """Settings are read before the CLI is asked for its models: its ids and aliases pass the check."""
    env = {"XDG_CONFIG_HOME": str(tmp_path), "MAXPROXY_WARM_MODELS": "claude-opus-5-5,fable"}
    assert load(env=env).warm_models == ["claude-opus-5-5", "fable"]
