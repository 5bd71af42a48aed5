"""maxproxy as a service: readiness reported to systemd over `NOTIFY_SOCKET` once the warm workers are up, and
`maxproxy doctor`, which checks the set-up and names the fix of each failure with the right exit code."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from maxproxy.bench.daemon import daemon
from maxproxy.settings import PROJECT_CLI

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


async def test_readiness_is_sent_when_the_pool_is_warm(cli_env: Path, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.setblocking(False)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(path),
        "MAXPROXY_STATE_DIR": str(tmp_path / "state"),
        "MAXPROXY_LOG_FORMAT": "json",
    }
    loop = asyncio.get_running_loop()
    try:
        async with daemon(env) as (proc, url, records):
            async with asyncio.timeout(60):
                ready = (await loop.sock_recv(listener, 4096)).decode()
            assert "READY=1" in ready.splitlines()
            assert f"STATUS=serving on {url}" in ready.splitlines()
            # Ready means warm: a worker had started before the datagram went out.
            await wait_for(lambda: any(r["event"] == "ready" for r in records))
            assert [r["warm"] for r in records if r["event"] == "ready"] == [True]
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                stopping = (await loop.sock_recv(listener, 4096)).decode()
                assert await proc.wait() == 0
            assert "STOPPING=1" in stopping.splitlines()
    finally:
        listener.close()


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maxproxy", "doctor"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def env(cli_env: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "MAXPROXY_STATE_DIR": str(tmp_path / "state"),
        "MAXPROXY_PORT": str(free_port()),
    }


def test_doctor_passes_on_a_good_set_up(env: dict[str, str]) -> None:
    done = doctor(env)
    assert done.returncode == 0, done.stdout
    assert "✓ cli: " in done.stdout
    assert "(the pinned one)" in done.stdout
    assert "✓ login: logged in (oauth_token)" in done.stdout
    assert "✓ directories:" in done.stdout
    assert "✓ port:" in done.stdout


def test_doctor_names_a_missing_cli(env: dict[str, str], tmp_path: Path) -> None:
    done = doctor({**env, "MAXPROXY_CLAUDE_PATH": str(tmp_path / "nowhere" / "claude")})
    assert done.returncode == 1
    assert "✗ cli: the Claude Code CLI is not at" in done.stdout
    assert "fix: run `make install`" in done.stdout


def test_doctor_names_a_login_that_is_missing(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "CLAUDE_CODE_OAUTH_TOKEN"}
    done = doctor(env)
    assert done.returncode == 1
    assert "✗ login: the CLI is not logged in" in done.stdout
    assert "auth login" in done.stdout
    # The same words as `/health` and the 503 answer (tests/e2e/test_login.py): the project's CLI, this HOME.
    assert f"fix: run `{PROJECT_CLI} auth login` as the user maxproxy runs as (HOME={env['HOME']})" in done.stdout


def test_doctor_names_an_unwritable_directory(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = doctor({**env, "MAXPROXY_STATE_DIR": str(blocker / "state")})
    assert done.returncode == 1
    assert "✗ directories: the state directory" in done.stdout
    assert "MAXPROXY_STATE_DIR" in done.stdout


def test_doctor_names_a_busy_port(env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        done = doctor({**env, "MAXPROXY_PORT": str(sock.getsockname()[1])})
    assert done.returncode == 1
    assert "✗ port: cannot listen on 127.0.0.1:" in done.stdout
    assert "MAXPROXY_PORT" in done.stdout


def test_doctor_names_a_bad_config(env: dict[str, str]) -> None:
    done = doctor({**env, "MAXPROXY_PORT": "not-a-port"})
    assert done.returncode == 2
    assert "✗ config: invalid setting `port`" in done.stdout


def test_doctor_refuses_a_public_bind_without_keys(env: dict[str, str]) -> None:
    done = doctor({**env, "MAXPROXY_HOST": "0.0.0.0"})
    assert done.returncode == 2
    assert "without API keys" in done.stdout
