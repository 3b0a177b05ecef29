"""HTTP/1.1 on asyncio streams: read one request head (parsed by httptools),
its body, hand it to the application, write the response; keep-alive,
chunked streaming, and raw hand-over of the connection for upgrades."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httptools

log = logging.getLogger("sandbox.apiserver")

# Kubernetes caps request bodies at 3 MiB (apiserver MaxRequestBodyBytes).
MAX_BODY = 3 * 1024 * 1024
# Request heads larger than this are refused (431-ish; we just close).
MAX_HEAD = 64 * 1024
# An idle keep-alive connection is closed after this many seconds.
IDLE_TIMEOUT = 120.0
# A request head or body must arrive within this many seconds.
READ_TIMEOUT = 30.0

_REASONS = {
    101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 410: "Gone",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Entity",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}


class BadHttp(Exception):
    """The peer sent something that is not acceptable HTTP/1.1."""


@dataclass
class Request:
    """One parsed request. ``headers`` names are lower-cased, repeats kept."""

    method: str
    target: str
    path: str
    query_list: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http_version: str
    peer_cert: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """First value of a header, or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    @property
    def is_upgrade(self) -> bool:
        conn = (self.header("connection") or "").lower()
        return "upgrade" in [t.strip() for t in conn.split(",")] and self.header("upgrade") is not None


@dataclass
class Response:
    """A complete body, or ``stream`` for a chunked body flushed per item."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None


# The application: returns a Response, or None when it took the connection over.
Handler = Callable[[Request], Awaitable[Response | None]]


class _Head:
    """httptools callbacks collecting the request line and headers."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse_head(raw: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; the rest of the stream belongs to the upgrade
    except httptools.HttpParserError as exc:
        raise BadHttp("malformed request head") from exc
    if not head.complete:
        raise BadHttp("incomplete request head")
    return parser.get_method().decode(), head.url.decode("latin-1"), parser.get_http_version(), head.headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    te = next((v for k, v in headers if k == "transfer-encoding"), "")
    if "chunked" in te.lower():
        out = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return bytes(out)
            if len(out) + size > MAX_BODY:
                raise BadHttp("body too large")
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    length = next((v for k, v in headers if k == "content-length"), None)
    if length is None:
        return b""
    try:
        n = int(length)
    except ValueError as exc:
        raise BadHttp("bad content-length") from exc
    if n < 0 or n > MAX_BODY:
        raise BadHttp("body too large")
    return await reader.readexactly(n)


def _status_body(code: int, reason: str, message: str) -> bytes:
    """A Status body for errors found before the application sees the request."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode() + b"\n"


def _head_bytes(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def write_response(writer: asyncio.StreamWriter, resp: Response, *, close: bool, head_only: bool = False) -> None:
    """Write ``resp``; a streamed body goes out chunked, one chunk per item, drained each time."""
    headers = [("Content-Type", resp.content_type), ("Date", email.utils.formatdate(usegmt=True)),
               ("Cache-Control", "no-cache, private"), *resp.headers]
    if close:
        headers.append(("Connection", "close"))
    if resp.stream is None:
        headers.append(("Content-Length", str(len(resp.body))))
        writer.write(_head_bytes(resp.status, headers) + (b"" if head_only else resp.body))
        await writer.drain()
        return
    headers.append(("Transfer-Encoding", "chunked"))
    writer.write(_head_bytes(resp.status, headers))
    await writer.drain()
    try:
        async for chunk in resp.stream:
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            await resp.stream.aclose()  # type: ignore[attr-defined]
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _watch_disconnect(reader: asyncio.StreamReader, task: asyncio.Task[None]) -> None:
    """Cancel a streaming response when the client goes away (EOF while we stream)."""
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass  # pipelined bytes during a stream are not expected; discard
    task.cancel()


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    """Serve requests on one connection until close, error or idle timeout."""
    ssl_object = writer.get_extra_info("ssl_object")
    peer_cert = ssl_object.getpeercert() if ssl_object is not None else None
    try:
        while True:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            if len(raw) > MAX_HEAD:
                return
            try:
                method, target, version, headers = _parse_head(raw)
            except BadHttp:
                await write_response(writer, Response(400, _status_body(400, "BadRequest", "malformed HTTP request")),
                                     close=True)
                return
            try:
                body = await asyncio.wait_for(_read_body(reader, headers), READ_TIMEOUT)
            except BadHttp:
                body = _status_body(413, "RequestEntityTooLarge", "request entity too large")
                await write_response(writer, Response(413, body), close=True)
                return
            split = urlsplit(target)
            qlist = parse_qsl(split.query, keep_blank_values=True)
            req = Request(method, target, unquote(split.path), qlist, headers, body, reader, writer,
                          version, peer_cert, dict(reversed(qlist)))
            resp = await handler(req)
            if resp is None:
                return  # upgraded: the handler owned the connection and is done with it
            conn_hdr = (req.header("connection") or "").lower()
            close = "close" in conn_hdr or version == "1.0"
            if resp.stream is not None:
                task = asyncio.ensure_future(write_response(writer, resp, close=True))
                watcher = asyncio.ensure_future(_watch_disconnect(reader, task))
                try:
                    await task
                except asyncio.CancelledError:
                    if not task.cancelled():
                        raise
                    return
                finally:
                    watcher.cancel()
                # The disconnect watcher consumed the reader; never reuse the connection.
                return
            await write_response(writer, resp, close=close, head_only=method == "HEAD")
            if close:
                return
    except (BadHttp, ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 2)
