"""Support for the kube-aad-proxy tests: a small real TLS upstream that
records every request head it receives, and raw HTTP/1.1 helpers for the
client side."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from dataclasses import dataclass, field

from certs import server_ssl_context
from tests.support.pki import PROXY_NAME, Pki

TIMEOUT = 10.0


@dataclass
class Received:
    """A request as the upstream saw it."""

    raw_head: bytes
    method: str
    path: str
    headers: list[tuple[str, str]]
    body_sha256: str
    body_len: int

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def parse_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    """First line and header list of a raw head."""
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            n, _, v = line.partition(":")
            headers.append((n, v.strip()))
    return lines[0], headers


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    for n, v in headers:
        if n.lower() == name.lower():
            return v
    return None


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    """A Content-Length or chunked body (decoded)."""
    if (header(headers, "transfer-encoding") or "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
    n = int(header(headers, "content-length") or 0)
    return await reader.readexactly(n) if n else b""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes


async def read_response(reader: asyncio.StreamReader, *, method: str = "GET") -> Response:
    """One response (Content-Length, chunked, or no body for HEAD/204/304)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    first, headers = parse_head(raw)
    status = int(first.split(" ")[1])
    if method == "HEAD" or status in (101, 204, 304) or status < 200:
        return Response(status, headers, b"", raw)
    if header(headers, "content-length") is None and header(headers, "transfer-encoding") is None:
        body = await asyncio.wait_for(reader.read(), TIMEOUT)
    else:
        body = await asyncio.wait_for(read_body(reader, headers), TIMEOUT)
    return Response(status, headers, body, raw)


def status_of(resp: Response) -> dict[str, object]:
    """The body of a Kubernetes ``Status`` response."""
    doc = json.loads(resp.body)
    assert isinstance(doc, dict) and doc["kind"] == "Status"
    return doc


def pattern(n: int, seed: bytes = b"x") -> bytes:
    """Deterministic, non-repeating-looking bytes."""
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


@dataclass
class RecordingUpstream:
    """A real TLS HTTP/1.1 server standing in for the API server.

    Routes: ``/echo`` (body back), ``/big?n=N`` (N bytes), ``/watch``
    (chunked; one chunk per item put on ``watch_events``, ends on None),
    ``/ws`` (101 then echo with a prefix), ``/head`` (HEAD-aware),
    ``/close`` (Connection: close), ``/die`` (closes without answering),
    ``/half`` (closes mid-body), anything else a small JSON object;
    ``Expect: 100-continue`` is answered before the body is read.
    """

    pki: Pki
    received: list[Received] = field(default_factory=list)
    watch_events: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    watch_started: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    # Bytes of ``/big`` bodies the proxy has taken so far (counted after each drain).
    big_sent: int = 0
    _server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def start(self) -> None:
        ctx = server_ssl_context(self.pki.upstream_cert, alpn=["http/1.1"])
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                first, headers = parse_head(raw)
                method, target, _ = first.split(" ")
                if target == "/die":
                    return  # close without an answer
                if (header(headers, "expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await read_body(reader, headers)
                self.received.append(
                    Received(raw, method, target, headers, hashlib.sha256(body).hexdigest(), len(body))
                )
                if not await self._respond(method, target, headers, body, reader, writer):
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _respond(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    ) -> bool:
        path, _, query = target.partition("?")
        if path == "/ws":
            if (header(headers, "upgrade") or "").lower() != "websocket":
                writer.write(_json(400, {"error": "not an upgrade"}))
                return True
            if "fail" in query:
                writer.write(_json(403, {"error": "no upgrade for you"}))
                return True
            proto = header(headers, "sec-websocket-protocol") or ""
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Protocol: {proto.split(',')[0].strip()}\r\n\r\n".encode()
                + b"hello-from-upstream"
            )
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
            return False
        if path == "/echo":
            writer.write(_head(200, len(body), "application/octet-stream") + body)
        elif path == "/big":
            n = int(query.split("=")[1])
            writer.write(_head(200, n, "application/octet-stream"))
            data = pattern(n, b"big")
            for i in range(0, n, 1 << 20):
                writer.write(data[i:i + (1 << 20)])
                await writer.drain()
                self.big_sent += len(data[i:i + (1 << 20)])
        elif path == "/watch":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            self.watch_started.set()
            while (item := await self.watch_events.get()) is not None:
                writer.write(b"%x\r\n%s\r\n" % (len(item), item))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/half":
            writer.write(_head(200, 100, "application/octet-stream") + b"0123456789")
            await writer.drain()
            return False
        elif path == "/idle-close":  # answer as kept-alive, then drop the connection (idle timeout)
            writer.write(_json(200, {"path": path}))
            await writer.drain()
            return False
        elif path == "/close":
            writer.write(_json(200, {"closing": True}, extra=b"Connection: close\r\n"))
            await writer.drain()
            return False
        elif method == "HEAD":
            writer.write(_head(200, 12345, "application/json"))
        else:
            writer.write(_json(200, {"method": method, "path": path}))
        await writer.drain()
        return True


def _head(status: int, length: int, ctype: str, extra: bytes = b"") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n".encode() + extra + b"\r\n"


def _json(status: int, doc: object, extra: bytes = b"") -> bytes:
    body = json.dumps(doc).encode()
    return _head(status, len(body), "application/json", extra) + body


async def connect(pki: Pki, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(), server_hostname=PROXY_NAME), TIMEOUT
    )


def get(path: str, *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: kubernetes", *extra, "", ""]
    return "\r\n".join(lines).encode()
