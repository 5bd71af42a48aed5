"""`maxproxy doctor`: checks the set-up and says, for each failure, how to fix it. Config valid (and keys present when
binding beyond loopback), the CLI found, its version (and whether it is the pinned one), the CLI logged in (`claude
auth status`: no request is spent), state and workspace directories writable, the port free (or held by a running
maxproxy), and the service unit installed and active where there is one. Exit code 0 when every check passes, 1 when
one fails, 2 when the configuration cannot be read.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from maxproxy import errors
from maxproxy.claude import command
from maxproxy.keys import Keyring, KeysError
from maxproxy.settings import PINNED_CLI_VERSION, Settings, SettingsError, config_file, load

TIMEOUT = 20.0


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable here (shown, never a failure)
    detail: str
    fix: str = ""


def main(config: str | None, *, host: str | None = None, port: int | None = None) -> int:
    try:
        settings = load(config, host=host, port=port)
        Keyring(settings)
    except (SettingsError, KeysError) as exc:
        _print(Check("config", False, str(exc), "correct the setting it names (README: Configuration)"))
        return 2
    source = config_file(config)
    checks = [Check("config", True, f"{source or 'no file; defaults and environment'}")]
    for run in CHECKS:
        try:
            checks.append(run(settings))
        except Exception as exc:  # a check that breaks is a failed check, not a traceback
            checks.append(Check(run.__name__.removeprefix("check_"), False, f"{type(exc).__name__}: {exc}"))
    for check in checks:
        _print(check)
    failed = [c for c in checks if c.ok is False]
    applicable = [c for c in checks if c.ok is not None]
    summary = f"\n{len(applicable) - len(failed)} of {len(applicable)} checks passed"
    if failed:
        summary += f"; {len(failed)} failed"
    if len(applicable) < len(checks):
        summary += f" ({len(checks) - len(applicable)} not applicable here)"
    print(summary)
    return 1 if failed else 0


def _print(check: Check) -> None:
    mark = {True: "✓", False: "✗", None: "-"}[check.ok]
    print(f"{mark} {check.name}: {check.detail}")
    if check.ok is False and check.fix:
        print(f"    fix: {check.fix}")


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [settings.cli_path, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=command.environment(settings),
        check=False,
    )


def check_cli(settings: Settings) -> Check:
    path = settings.cli_path
    if shutil.which(path) is None:
        return Check(
            "cli",
            False,
            f"the Claude Code CLI is not at {path!r}",
            "run `make install` (it installs the pinned CLI into the project), or set MAXPROXY_CLAUDE_PATH",
        )
    try:
        done = _cli(settings, "--version")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("cli", False, f"{path} does not run: {exc}", "reinstall it with `make install`")
    version = done.stdout.strip().split()[0] if done.returncode == 0 and done.stdout.strip() else ""
    if not version:
        return Check("cli", False, f"{path} --version failed: {done.stderr.strip()[:200]}", "reinstall: `make install`")
    if version != PINNED_CLI_VERSION:
        return Check(
            "cli",
            True,
            f"{path} is version {version}; maxproxy is tested with {PINNED_CLI_VERSION} (it may still work)",
        )
    return Check("cli", True, f"{path}, version {version} (the pinned one)")


def check_login(settings: Settings) -> Check:
    if shutil.which(settings.cli_path) is None:
        return Check("login", None, "skipped: no CLI")
    try:
        done = _cli(settings, "auth", "status")
        status = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return Check("login", False, f"`claude auth status` gave no answer: {exc}", "run `claude auth login`")
    method = status.get("authMethod", "unknown")
    if not status.get("loggedIn"):
        return Check(
            "login",
            False,
            "the CLI is not logged in",
            errors.login_fix(settings.cli_path),  # the same words as `/health` and the 503 answer
        )
    if os.environ.get("ANTHROPIC_API_KEY"):
        return Check(
            "login",
            True,
            f"logged in ({method}), but ANTHROPIC_API_KEY is set: requests are billed to that key, not the plan",
        )
    return Check("login", True, f"logged in ({method})")


def _writable(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_dirs(settings: Settings) -> Check:
    for what, directory in (("state", settings.state_path), ("workspace", settings.workspace_path)):
        problem = _writable(directory)
        if problem is not None:
            return Check(
                "directories",
                False,
                f"the {what} directory {directory} is not writable: {problem}",
                f"create it writable for this user, or set MAXPROXY_{'STATE_DIR' if what == 'state' else 'WORKSPACE'}",
            )
    return Check("directories", True, f"{settings.state_path} and {settings.workspace_path} are writable")


def check_port(settings: Settings) -> Check:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((settings.host, settings.port))
            return Check("port", True, f"{settings.host}:{settings.port} is free")
        except OSError as exc:
            busy = exc
    if _is_maxproxy(settings):
        return Check("port", True, f"{settings.host}:{settings.port} is served by a running maxproxy")
    return Check(
        "port",
        False,
        f"cannot listen on {settings.host}:{settings.port}: {busy.strerror}",
        "stop what uses the port (`ss -ltnp`), or set MAXPROXY_PORT / --port",
    )


def _is_maxproxy(settings: Settings) -> bool:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "localhost") else settings.host  # noqa: S104
    url = f"http://{host}:{settings.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return "cli" in json.loads(response.read())
    except (OSError, ValueError):
        return False


def check_keys(settings: Settings) -> Check:
    keys = Keyring(settings).keys
    if not settings.loopback:
        return Check("keys", True, f"{len(keys)} API keys for a non-loopback bind ({settings.host})")
    return Check("keys", True, f"loopback bind; {len(keys)} API keys" + ("" if keys else " (none needed)"))


def check_service(settings: Settings) -> Check:
    if sys.platform == "darwin":
        plist = Path.home() / "Library/LaunchAgents/com.maxproxy.plist"
        if not plist.exists():
            return Check("service", None, "no launchd agent installed (deploy/launchd/README.md to run as a service)")
        done = subprocess.run(
            ["launchctl", "print", f"gui/{os.getuid()}/com.maxproxy"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT,
        )
        if done.returncode != 0:
            return Check("service", False, f"{plist} is installed but not loaded", _LAUNCHD_FIX)
        return Check("service", True, "the launchd agent com.maxproxy is loaded")
    if platform.system() != "Linux" or shutil.which("systemctl") is None:
        return Check("service", None, "no systemd here")
    units = [
        (["--user"], Path.home() / ".config/systemd/user/maxproxy.service"),
        ([], Path("/etc/systemd/system/maxproxy.service")),
    ]
    for scope, unit in units:
        if unit.exists():
            done = subprocess.run(
                ["systemctl", *scope, "is-active", "maxproxy"],  # noqa: S607
                capture_output=True,
                text=True,
                check=False,
                timeout=TIMEOUT,
            )
            state = done.stdout.strip() or done.stderr.strip()[:100]
            if state != "active":
                fix = f"systemctl {' '.join(scope)} enable --now maxproxy; journalctl {' '.join(scope)} -u maxproxy"
                return Check("service", False, f"{unit} is installed but {state}", fix.replace("  ", " "))
            return Check("service", True, f"{unit} is installed and active")
    return Check("service", None, "no systemd unit installed (deploy/systemd/README.md to run as a service)")


_LAUNCHD_FIX = "launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/com.maxproxy.plist"

CHECKS: list[Callable[[Settings], Check]] = [check_cli, check_login, check_dirs, check_port, check_keys, check_service]
