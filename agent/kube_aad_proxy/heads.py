"""Parse HTTP/1.1 request and response heads with httptools (llhttp).

Only heads go through the parser: the caller finds the end of a head
(``CRLF CRLF``), hands exactly those bytes here, and frames bodies itself
(see :mod:`agent.kube_aad_proxy.framing`) so body bytes are forwarded raw.
"""

from __future__ import annotations

from dataclasses import dataclass

import httptools

HEAD_END = b"\r\n\r\n"


class HeadError(Exception):
    """A head we refuse to forward; ``str()`` is a short, token-free reason."""


@dataclass(slots=True)
class RequestHead:
    """A parsed request head; ``raw`` is exactly what the client sent."""

    raw: bytes
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    upgrade: bool

    @property
    def path(self) -> str:
        """The request path without the query string (safe to log)."""
        return self.target.split(b"?", 1)[0].decode("latin-1")


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head; ``raw`` is exactly what the server sent."""

    raw: bytes
    status: int
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool


class _Collector:
    """httptools callback target: gathers the target and the header list."""

    __slots__ = ("complete", "headers", "target")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _check_line_endings(raw: bytes) -> None:
    # llhttp tolerates some of these; the Go server behind us may read them
    # differently, so anything ambiguous is refused rather than forwarded.
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raise HeadError("bare LF in request head")
    if b"\r\n " in raw or b"\r\n\t" in raw:
        raise HeadError("obsolete header line folding")
    if b"\x00" in raw:
        raise HeadError("NUL byte in request head")


def _feed(parser: httptools.HttpRequestParser | httptools.HttpResponseParser, raw: bytes) -> None:
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # the head ended in an upgrade; the caller decides what follows
    except httptools.HttpParserError as exc:
        # llhttp reasons are fixed strings (never input bytes), safe to show.
        raise HeadError(f"malformed head: {exc}") from None


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse one request head ending in ``CRLF CRLF``.

    Raises:
        HeadError: The head is malformed or ambiguous.
    """
    _check_line_endings(raw)
    c = _Collector()
    p = httptools.HttpRequestParser(c)
    _feed(p, raw)
    if not c.complete:
        raise HeadError("incomplete request head")
    if p.get_http_version() != "1.1" and p.get_http_version() != "1.0":
        raise HeadError("unsupported HTTP version")
    return RequestHead(
        raw=raw,
        method=p.get_method().decode("ascii"),
        target=c.target,
        headers=c.headers,
        keep_alive=bool(p.should_keep_alive()),
        upgrade=bool(p.should_upgrade()),
    )


def parse_response_head(raw: bytes) -> ResponseHead:
    """Parse one response head ending in ``CRLF CRLF``.

    Raises:
        HeadError: The head is malformed.
    """
    c = _Collector()
    p = httptools.HttpResponseParser(c)
    _feed(p, raw)
    if not c.complete:
        raise HeadError("incomplete response head")
    return ResponseHead(
        raw=raw, status=int(p.get_status_code()), headers=c.headers, keep_alive=bool(p.should_keep_alive())
    )


def header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """All values of header ``name`` (lower-case bytes), in order."""
    return [v for n, v in headers if n.lower() == name]


def has_token(headers: list[tuple[bytes, bytes]], name: bytes, token: bytes) -> bool:
    """Whether a comma-separated header (``Connection``) lists ``token``."""
    return any(t.strip().lower() == token for v in header_values(headers, name) for t in v.split(b","))
