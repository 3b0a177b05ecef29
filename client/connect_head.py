"""The HTTP CONNECT side of arc-proxy's listener (kubeconfig ``proxy-url``).

kubectl's TLS ends inside the cluster, so arc-proxy can only speak to kubectl
before the tunnel starts: as the HTTP proxy kubectl CONNECTs through. A
refused CONNECT is the one place where arc-proxy's words reach kubectl's
output: Go's transport prints the reason phrase of a non-200 answer verbatim
(not a body), so the phrase carries the cause and the fix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = [
    "CONNECT_ESTABLISHED",
    "MAX_REASON_PHRASE",
    "MAX_REQUEST_HEAD",
    "REQUEST_HEAD_WAIT",
    "ConnectRequest",
    "HeadRefused",
    "is_http_first_byte",
    "read_connect_request",
    "refusal_response",
    "sanitise_phrase",
]

# A CONNECT request head (request line + headers, up to the blank line) is at
# most this long: Go sends ~100 bytes (Host, User-Agent, maybe
# Proxy-Authorization); more is not a proxy client of ours.
MAX_REQUEST_HEAD = 8 * 1024
# ... and must arrive within this time after the connection is accepted (the
# first byte included, in either mode: TLS and HTTP clients both speak first).
REQUEST_HEAD_WAIT = 5.0
# Reason phrases are cut to this many characters (one terminal line or two).
MAX_REASON_PHRASE = 400

CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def is_http_first_byte(byte: int) -> bool:
    """An HTTP/1.1 request starts with its method: ASCII capitals. A TLS
    ClientHello starts with 0x16; anything else is spliced as it is."""
    return 0x41 <= byte <= 0x5A


@dataclass(frozen=True)
class ConnectRequest:
    """A parsed CONNECT: its ``host:port`` and the bytes after the head."""

    authority: str
    rest: bytes


class HeadRefused(Exception):
    """The request head is not a CONNECT we serve: answer ``status`` and close."""

    def __init__(self, status: int, phrase: str, *, headers: tuple[str, ...] = ()) -> None:
        super().__init__(phrase)
        self.status = status
        self.phrase = phrase
        self.headers = headers


def sanitise_phrase(text: str) -> str:
    """A reason phrase: printable ASCII only (no CR/LF), bounded length.

    kubectl replaces any error whose text contains "connection refused" by its
    own "The connection to the server ... was refused - did you specify the
    right host or port?", which would hide the cause: those words are reworded.
    """
    text = text.replace("connection refused", "connection was refused")
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    if len(cleaned) > MAX_REASON_PHRASE:
        cleaned = cleaned[:MAX_REASON_PHRASE - 3] + "..."
    return cleaned or "refused"


def refusal_response(status: int, phrase: str, headers: tuple[str, ...] = ()) -> bytes:
    """``HTTP/1.1 <status> <phrase>`` with no body, closing the connection."""
    lines = [f"HTTP/1.1 {status} {sanitise_phrase(phrase)}", *headers,
             "Content-Length: 0", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii")


async def read_connect_request(first: bytes, reader: asyncio.StreamReader) -> ConnectRequest:
    """Read the rest of a request head that began with ``first``.

    The caller bounds the time (:data:`REQUEST_HEAD_WAIT`); the size is bounded here.

    Raises:
        HeadRefused: too large (431), cut short or malformed (400), not CONNECT (405).
    """
    head = bytearray(first)
    while b"\r\n\r\n" not in head:
        if len(head) >= MAX_REQUEST_HEAD:
            raise HeadRefused(431, f"arc-proxy: request head larger than {MAX_REQUEST_HEAD} bytes")
        chunk = await reader.read(MAX_REQUEST_HEAD - len(head) + 4)
        if not chunk:
            raise HeadRefused(400, "arc-proxy: request head cut short")
        head += chunk
    end = head.index(b"\r\n\r\n")
    if end > MAX_REQUEST_HEAD:
        raise HeadRefused(431, f"arc-proxy: request head larger than {MAX_REQUEST_HEAD} bytes")
    request_line = bytes(head[:head.index(b"\r\n")])
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HeadRefused(400, "arc-proxy: not an HTTP/1.1 request line")
    method, target = parts[0], parts[1]
    if method != b"CONNECT":
        raise HeadRefused(405, "arc-proxy is an HTTP CONNECT proxy (kubeconfig proxy-url): "
                               "only CONNECT is served", headers=("Allow: CONNECT",))
    authority = target.decode("ascii", errors="replace")
    host, sep, port = authority.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HeadRefused(400, "arc-proxy: CONNECT needs host:port")
    return ConnectRequest(authority, bytes(head[end + 4:]))
