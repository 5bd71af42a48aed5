"""A recording HTTPS proxy on 127.0.0.1 that lets the real CLI reach the fake upstream at a host it cannot be pointed
elsewhere for (its plan-usage endpoint lives at a fixed `https://api.anthropic.com`, not at `ANTHROPIC_BASE_URL`).
For a `CONNECT` to that one target it answers 200, terminates TLS with a certificate for that host from a throwaway
test CA (`trustme`), and pipes the decrypted HTTP to the fake upstream's plain port; every other `CONNECT` target and
every plain proxied request is refused with 403 and recorded, never dialed. `Tunnel.environment()` is what the CLI
needs to use it: the proxy variables, loopback left direct, and the CA it must trust.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trustme
import yarl

from maxproxy.bench.upstream import TUNNELED_HOST

HOST = TUNNELED_HOST
TARGET = f"{HOST}:443"


@dataclass
class Tunnel:
    """`upstream` is the fake's base URL (`http://127.0.0.1:<port>`); `start()` before use, `close()` after."""

    upstream: str
    connects: list[str] = field(default_factory=list)  # CONNECT targets let through (always TARGET)
    refused: list[str] = field(default_factory=list)  # every other request line, as the client sent it
    ca_path: Path | None = None
    url: str = ""
    _server: asyncio.Server | None = None
    _context: ssl.SSLContext | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = None
    _clients: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def start(self) -> str:
        ca = trustme.CA()
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST).configure_cert(self._context)
        self._dir = tempfile.TemporaryDirectory(prefix="maxproxy-tunnel-")
        self.ca_path = Path(self._dir.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def environment(self) -> dict[str, str]:
        """The variables the CLI needs to reach the fake through this tunnel and trust its certificate (measured with
        the pinned CLI: its Bun runtime takes extra roots from `NODE_EXTRA_CA_CERTS`)."""
        assert self.ca_path is not None, "start() the tunnel first"
        return {
            "HTTPS_PROXY": self.url,
            "HTTP_PROXY": self.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "NODE_EXTRA_CA_CERTS": str(self.ca_path),
        }

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing a client's connection ends its handler's reads, so each handler returns by itself. They are not
        # cancelled: Python 3.11's stream server logs a cancelled handler as an unhandled error.
        for writer in self._clients.values():
            writer.transport.abort()
        if self._clients:
            _, stuck = await asyncio.wait(self._clients, timeout=5)
            for task in stuck:  # a bound, not the way out: nothing is left running past close
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._dir is not None:
            self._dir.cleanup()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or gave up on the handshake: nothing to record beyond the request line
        finally:
            self._clients.pop(task, None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            return  # closed before it asked anything
        while (await reader.readline()).strip():
            pass  # the proxy request's headers: nothing in them changes the answer
        method, _, rest = line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        if method != "CONNECT" or target != TARGET:
            self.refused.append(line)
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        self.connects.append(target)
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        assert self._context is not None
        await writer.start_tls(self._context)
        upstream = yarl.URL(self.upstream)
        up_reader, up_writer = await asyncio.open_connection(upstream.host, upstream.port)
        pipes = {asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))}
        try:
            # Either side closing ends the tunnel (a TLS stream cannot be half-closed).
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            up_writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
