"""Events returned by :meth:`tunnel.connection.Connection.receive`.

Frozen dataclasses, named in the past tense: each one says what the peer did (or,
for :class:`StreamReset`, what happened to a stream because of the peer). The
adapter dispatches on their type.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.errors import ErrorCode

__all__ = [
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "PingReceived",
    "PongReceived",
    "StreamAccepted",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "WindowUpdated",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every core event."""


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """The peer sent OPEN: call ``accept_stream`` or ``reset_stream`` next.

    Attributes:
        stream_id: The new stream (peer parity).
        target: What the peer wants to reach (opaque to the core).
    """

    stream_id: int
    target: bytes


@dataclass(frozen=True, slots=True)
class StreamAccepted(Event):
    """The peer sent OPEN_OK for a stream we opened: DATA may flow both ways."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """The peer sent DATA.

    Call ``acknowledge_received_data(stream_id, len(data))`` once the application
    consumed the bytes: that is what returns credit to the peer.
    """

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer sent FIN: no more DATA will arrive on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The stream is gone both ways: the peer sent RESET, or the core reset it
    because the peer broke a stream-level rule (a RESET with ``error_code`` is
    already queued), or the peer's GOAWAY showed it never processed our OPEN
    (REFUSED_STREAM). Drop whatever the stream still buffers: its credit has
    already been returned to the session.
    """

    stream_id: int
    error_code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """The peer granted ``delta`` more bytes on ``stream_id`` (0 = the session)."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """The peer sent PING; the core already queued the PONG."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """The peer answered one of our PINGs."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer sent GOAWAY: open no new streams; existing ones may finish.

    With ``error_code`` NO_ERROR or GOING_AWAY the session drains: close the
    websocket when ``open_stream_count`` reaches 0. With any other code the peer
    failed the session: the connection is already closed; close the websocket and
    fail every stream.

    Attributes:
        last_stream_id: Highest stream of ours the peer processed; ours above it
            were reset with REFUSED_STREAM (StreamReset events precede this one).
        error_code: Why (NO_ERROR or GOING_AWAY for a graceful drain).
        reason: Short text for logs.
    """

    last_stream_id: int
    error_code: ErrorCode
    reason: str
