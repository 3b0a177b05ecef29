"""Body framing: where a message body ends, without touching its bytes.

Each framer is fed the bytes after a head and answers how many of them belong
to the current message. The caller forwards exactly those bytes, so bodies
(Content-Length or chunked, trailers included) reach the other side raw and
Python only looks at chunk-size lines, never at body bytes.

The framing rules are RFC 9112 section 6.3, the same the Go server and client
on the other side apply, so both ends agree where every message ends.
"""

from __future__ import annotations

import re

from agent.kube_aad_proxy.config import MAX_CHUNK_LINE_BYTES
from agent.kube_aad_proxy.heads import HeadError, header_values

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")


class FramingError(Exception):
    """The peer's body framing is malformed; the connection cannot continue."""


class BodyFramer:
    """Base class; ``feed`` returns ``(end, done)``: ``data[start:end]`` is
    this message's, and ``done`` says the message is complete."""

    def feed(self, data: bytes, start: int) -> tuple[int, bool]:
        raise NotImplementedError


class NoBody(BodyFramer):
    """A message without a body."""

    def feed(self, data: bytes, start: int) -> tuple[int, bool]:
        return start, True


class UntilClose(BodyFramer):
    """A response body delimited by the server closing the connection."""

    def feed(self, data: bytes, start: int) -> tuple[int, bool]:
        return len(data), False


class ContentLength(BodyFramer):
    """Exactly ``length`` bytes."""

    def __init__(self, length: int) -> None:
        self.remaining = length

    def feed(self, data: bytes, start: int) -> tuple[int, bool]:
        take = min(self.remaining, len(data) - start)
        self.remaining -= take
        return start + take, self.remaining == 0


class Chunked(BodyFramer):
    """``Transfer-Encoding: chunked``: size lines, data, CRLF, ..., 0, trailers."""

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self._state = self._SIZE
        self._line = b""  # partial size or trailer line (bounded)
        self._remaining = 0

    def _take_line(self, data: bytes, pos: int) -> tuple[int, bytes | None]:
        """Consume up to and including the next LF; the line without CRLF, or None if incomplete."""
        nl = data.find(b"\n", pos)
        if nl < 0:
            self._line += data[pos:]
            if len(self._line) > MAX_CHUNK_LINE_BYTES:
                raise FramingError("chunk line too long")
            return len(data), None
        line = self._line + data[pos:nl + 1]
        self._line = b""
        if len(line) > MAX_CHUNK_LINE_BYTES:
            raise FramingError("chunk line too long")
        if not line.endswith(b"\r\n"):
            raise FramingError("bare LF in chunked framing")
        return nl + 1, line[:-2]

    def feed(self, data: bytes, start: int) -> tuple[int, bool]:
        pos, end = start, len(data)
        while pos < end:
            if self._state == self._DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
            elif self._state == self._SIZE:
                pos, line = self._take_line(data, pos)
                if line is None:
                    break
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise FramingError("malformed chunk size")
                self._remaining = int(m.group(1), 16)
                self._state = self._DATA if self._remaining else self._TRAILER
            elif self._state == self._DATA_END:
                pos, line = self._take_line(data, pos)
                if line is None:
                    break
                if line:
                    raise FramingError("chunk data longer than its size")
                self._state = self._SIZE
            else:  # trailer section: lines until an empty one
                pos, line = self._take_line(data, pos)
                if line is None:
                    break
                if not line:
                    return pos, True
        return pos, False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    values = header_values(headers, b"content-length")
    if not values:
        return None
    # Identical repeats are allowed by RFC 9112; anything else is smuggling bait.
    distinct = {v.strip() for v in values}
    if len(distinct) != 1:
        raise HeadError("conflicting Content-Length headers")
    v = distinct.pop()
    if not v.isdigit() or len(v) > 18:
        raise HeadError("invalid Content-Length")
    return int(v)


def _is_chunked(headers: list[tuple[bytes, bytes]]) -> bool | None:
    """None without Transfer-Encoding; True when chunked is the final coding."""
    values = header_values(headers, b"transfer-encoding")
    if not values:
        return None
    codings = [t.strip().lower() for v in values for t in v.split(b",")]
    return codings[-1] == b"chunked"


def request_framer(headers: list[tuple[bytes, bytes]]) -> BodyFramer:
    """Framing of a request body (RFC 9112 6.3, request rules).

    Raises:
        HeadError: Ambiguous or unsupported framing (refused with 400).
    """
    chunked = _is_chunked(headers)
    length = _content_length(headers)
    if chunked is not None:
        if length is not None:
            raise HeadError("both Transfer-Encoding and Content-Length")
        if not chunked:
            raise HeadError("request Transfer-Encoding must end in chunked")
        return Chunked()
    if length:
        return ContentLength(length)
    return NoBody()


def response_framer(method: str, status: int, headers: list[tuple[bytes, bytes]]) -> BodyFramer:
    """Framing of a response body (RFC 9112 6.3, response rules).

    Raises:
        HeadError: Conflicting Content-Length values.
    """
    if method == "HEAD" or status < 200 or status in (204, 304):
        return NoBody()
    chunked = _is_chunked(headers)
    if chunked is not None:
        return Chunked() if chunked else UntilClose()
    length = _content_length(headers)
    if length is None:
        return UntilClose()
    return ContentLength(length) if length else NoBody()
