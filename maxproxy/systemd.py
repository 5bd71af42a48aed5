"""systemd's readiness protocol (sd_notify), without a dependency: one datagram to the unix socket systemd names in
`NOTIFY_SOCKET` (a path, or an abstract name starting with "@"). maxproxy sends `READY=1` once its warm workers are
up (so `systemctl start` returns when requests can be served warm), `STATUS=` lines, `RELOADING=1` around a keys
reload, and `STOPPING=1` when it drains. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("maxproxy.systemd")


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=warm") to systemd; False when there is no socket or it failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True
