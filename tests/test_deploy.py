"""The service definitions: the systemd unit passes `systemd-analyze verify` and has the settings a supervised
maxproxy needs; the launchd plist parses and runs maxproxy's own entry point."""

from __future__ import annotations

import configparser
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "maxproxy.service"
PLIST = ROOT / "deploy" / "launchd" / "com.maxproxy.plist"


def unit() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs Debian's systemd where it can)")
    # verify checks that ExecStart exists: point it at this checkout's entry point, as the README's set-up does.
    text = UNIT.read_text().replace("%h/maxproxy", str(ROOT))
    target = tmp_path / "maxproxy.service"
    target.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "maxproxy.service" not in done.stderr, done.stderr  # no warnings about the unit itself


def test_the_unit_lets_maxproxy_stop_its_workers_and_report_readiness() -> None:
    service = unit()
    assert service["Type"] == "notify"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert int(service["TimeoutStopSec"]) > 30 + 3 * 3  # shutdown_timeout, then the stop steps of a worker
    assert service["ExecStart"].endswith("/.venv/bin/maxproxy")
    assert service["Environment"] == "MAXPROXY_LOG_FORMAT=json"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    # The CLI writes ~/.claude, ~/.claude.json and a lock directory next to it: the home stays writable.
    assert service["ReadWritePaths"].split() == ["%h"]


def test_the_plist_parses_and_runs_the_entry_point() -> None:
    plist = plistlib.loads(PLIST.read_bytes())
    assert plist["Label"] == "com.maxproxy"
    [program] = plist["ProgramArguments"]
    assert program.endswith("/.venv/bin/maxproxy")
    assert "maxproxy = maxproxy.__main__:main" in (ROOT / "setup.cfg").read_text()
    assert (ROOT / ".venv" / "bin" / "maxproxy").exists()  # what `make install` puts there
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert "node_modules/.bin" in plist["EnvironmentVariables"]["PATH"]
    assert plist["StandardOutPath"].endswith(".log")
