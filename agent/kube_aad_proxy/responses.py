"""Split the API server's byte stream into responses, forwarded raw.

Sans-I/O like :mod:`agent.kube_aad_proxy.requests`. Heads are parsed only to
know where each response ends (HEAD, 1xx, 204/304, chunked, Content-Length,
until close) and whether an upgrade happened; the bytes go on unchanged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agent.kube_aad_proxy.framing import (
    BodyFramer,
    FramingError,
    NoBody,
    UntilClose,
    response_framer,
)
from agent.kube_aad_proxy.heads import HEAD_END, HeadError, has_token, parse_response_head


@dataclass(slots=True)
class Exchange:
    """One forwarded request awaiting its response."""

    method: str
    path: str
    principal: str
    started: float
    upgrade: bool
    keep_alive: bool
    status: int = 0
    #: response bytes were already sent to the client for it
    answered: bool = False
    #: a reason added as a ``Warning`` header if the API server answers 403
    #: (central roles not applied: agent/central_rbac.py)
    warning_on_403: bytes | None = None


@dataclass(slots=True)
class ResponseDone:
    """The response to ``exchange`` is complete; ``close`` if the connection must end."""

    exchange: Exchange
    close: bool


@dataclass(slots=True)
class Upgraded:
    """A 101 for an upgrade request: from here on both sides are spliced raw."""

    exchange: Exchange
    rest: bytes


class ResponseInvalid(Exception):
    """The upstream sent something unparseable or unexpected."""


ResponseEvent = bytes | ResponseDone | Upgraded | ResponseInvalid


class ResponseReader:
    """Response-side framing; ``pending`` holds forwarded requests in order."""

    def __init__(self, pending: deque[Exchange], max_head_bytes: int) -> None:
        self.pending = pending
        self._max_head = max_head_bytes
        self._buf = b""
        self._framer: BodyFramer | None = None
        self._close_after = False

    @property
    def until_close(self) -> bool:
        """The current response ends when the upstream closes."""
        return isinstance(self._framer, UntilClose)

    @property
    def mid_response(self) -> bool:
        """Some bytes of the current response were read but not all."""
        return self._framer is not None or bool(self._buf)

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """Parse ``data``; returns bytes to forward and completion events, in order.

        Malformed framing or a response nobody asked for ends the list with a
        :class:`ResponseInvalid` (after the bytes that were fine); the reader
        must not be fed again after that.
        """
        events: list[ResponseEvent] = []
        # Where the head end can first be: a partial head was already searched.
        search_from = max(0, len(self._buf) - 3)
        if self._buf:
            data, self._buf = self._buf + data, b""
        pos, end = 0, len(data)
        try:
            while pos < end:
                if self._framer is not None:
                    stop, done = self._framer.feed(data, pos)
                    if stop > pos:
                        events.append(data if (pos == 0 and stop == end) else data[pos:stop])
                    pos = stop
                    if not done:
                        continue
                    self._framer = None
                    ex = self.pending.popleft()
                    events.append(ResponseDone(ex, self._close_after))
                    if self._close_after:
                        return events  # anything after a closing response is dropped
                    continue
                i = data.find(HEAD_END, max(pos, search_from))
                search_from = 0
                if i < 0:
                    if end - pos > self._max_head:
                        events.append(ResponseInvalid("response head too large"))
                        return events
                    self._buf = data[pos:]
                    break
                if not self.pending:
                    events.append(ResponseInvalid("response without a request"))
                    return events
                head = parse_response_head(data[pos:i + 4])
                ex = self.pending[0]
                if head.status == 101 and not ex.upgrade:
                    # Never relay a switch the client did not ask for; the 502 says why.
                    events.append(ResponseInvalid("101 for a request that did not ask to upgrade"))
                    return events
                events.append(_with_warning(head.raw, ex.warning_on_403)
                              if head.status == 403 and ex.warning_on_403 else head.raw)
                ex.answered = True
                pos = i + 4
                if head.status == 101:
                    ex.status = 101
                    self.pending.popleft()
                    events.append(Upgraded(ex, data[pos:]))
                    return events
                if head.status < 200:
                    continue  # 100 Continue and friends: the final response follows
                ex.status = head.status
                self._framer = response_framer(ex.method, head.status, head.headers)
                # A failed upgrade closes the connection so no unparsed request slips through.
                self._close_after = (
                    ex.upgrade or not ex.keep_alive or not head.keep_alive
                    or has_token(head.headers, b"connection", b"close")
                )
                if isinstance(self._framer, NoBody):
                    self._framer = None
                    self.pending.popleft()
                    events.append(ResponseDone(ex, self._close_after))
                    if self._close_after:
                        return events
        except (HeadError, FramingError) as exc:
            events.append(ResponseInvalid(str(exc)))
        return events

    def finish_until_close(self) -> ResponseDone | None:
        """At upstream EOF: the response delimited by close is complete."""
        if isinstance(self._framer, UntilClose) and self.pending:
            self._framer = None
            return ResponseDone(self.pending.popleft(), True)
        return None


def _with_warning(raw_head: bytes, text: bytes) -> bytes:
    """``raw_head`` with one RFC 9111 ``Warning: 299 - "text"`` header before
    its blank line (the form client-go shows as ``Warning: text``)."""
    safe = bytes(c for c in text if 0x20 <= c < 0x7F and c not in b'"\\')
    return raw_head[:-2] + b'Warning: 299 - "' + safe + b'"\r\n\r\n'
