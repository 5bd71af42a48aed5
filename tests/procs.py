"""Process inspection through /proc: the children of a process (zombies included) and `claude` processes anywhere."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def children(parent: int) -> list[str]:
    """Descriptions of the live or zombie children of `parent`."""
    out = []
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat[1] == parent:
            out.append(f"{pid} [{stat[0]}] {_cmdline(pid)[:120]}")
    return out


def in_group(pgid: int) -> list[int]:
    """Processes still in a process group (a worker's own group includes whatever its tools started)."""
    return [pid for pid in _pids() if (stat := _stat(pid)) is not None and stat[2] == pgid]


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"
