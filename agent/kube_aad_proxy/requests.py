"""Split kubectl's byte stream into request heads and raw body bytes.

Sans-I/O: :meth:`RequestReader.feed` takes bytes and returns events in order.
Bodies come back as slices of the input (no per-byte work). After a request
that asks for an upgrade, nothing more is parsed: later bytes are held raw
until the connection either splices (101) or closes.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.kube_aad_proxy.framing import BodyFramer, FramingError, NoBody, request_framer
from agent.kube_aad_proxy.heads import HEAD_END, HeadError, RequestHead, parse_request_head


@dataclass(slots=True)
class HeadReceived:
    """A complete, parsed request head."""

    head: RequestHead


@dataclass(slots=True)
class BodyReceived:
    """Raw body bytes (Content-Length or chunked framing included) of the last head."""

    data: bytes


@dataclass(slots=True)
class RequestInvalid:
    """The stream cannot be parsed further; answer ``status`` and close."""

    status: int
    message: str


RequestEvent = HeadReceived | BodyReceived | RequestInvalid


class RequestReader:
    """Request-side framing for one downstream connection.

    Args:
        max_head_bytes: Largest head accepted (431 above it).
    """

    def __init__(self, max_head_bytes: int) -> None:
        self._max_head = max_head_bytes
        self._buf = b""
        self._framer: BodyFramer = NoBody()
        self._in_body = False
        self._failed = False
        self._upgrade_sent = False
        #: raw bytes that arrived after an upgrade request (sent on 101)
        self.held = bytearray()

    @property
    def partial_head(self) -> bool:
        """Some bytes of a request head arrived, not all of it."""
        return bool(self._buf)

    @property
    def holding(self) -> bool:
        """True once an upgrade request (and its body) has been read."""
        return self._upgrade_sent and not self._in_body

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Parse ``data``; returns the events it completes, in order."""
        if self._failed:
            return []
        if self.holding:
            self.held += data
            return []
        events: list[RequestEvent] = []
        # Where the head end can first be: a partial head was already searched.
        search_from = max(0, len(self._buf) - 3)
        if self._buf:
            data, self._buf = self._buf + data, b""
        pos, end = 0, len(data)
        try:
            while pos < end:
                if self._in_body:
                    stop, done = self._framer.feed(data, pos)
                    if stop > pos:
                        events.append(BodyReceived(data if (pos == 0 and stop == end) else data[pos:stop]))
                    pos = stop
                    if not done:
                        continue
                    self._in_body = False
                if self.holding:
                    self.held += data[pos:]
                    return events
                # RFC 9112 2.2: ignore empty lines before a request line.
                while data.startswith(b"\r\n", pos):
                    pos += 2
                if pos >= end:
                    break
                i = data.find(HEAD_END, max(pos, search_from))
                search_from = 0
                if i < 0:
                    if end - pos > self._max_head:
                        return self._fail(events, 431, "request head too large")
                    self._buf = data[pos:]
                    break
                if i + 4 - pos > self._max_head:
                    return self._fail(events, 431, "request head too large")
                head = parse_request_head(data[pos:i + 4])
                pos = i + 4
                if head.method == "CONNECT":
                    return self._fail(events, 400, "CONNECT is not supported")
                self._framer = request_framer(head.headers)
                self._in_body = True
                self._upgrade_sent = head.upgrade
                events.append(HeadReceived(head))
        except (HeadError, FramingError) as exc:
            return self._fail(events, 400, str(exc))
        return events

    def _fail(self, events: list[RequestEvent], status: int, message: str) -> list[RequestEvent]:
        self._failed = True
        self._buf = b""
        events.append(RequestInvalid(status, message))
        return events
