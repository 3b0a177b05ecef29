"""Errors of the tunnel protocol core.

Exception tree::

    TunnelError                  anything the tunnel package raises on purpose
    └── ProtocolError            abstract: a broken rule of tunnel v1 (never raised itself)
        ├── LocalProtocolError   our caller broke a rule (raised by ``send_*`` style methods)
        └── RemoteProtocolError  the peer broke a rule (raised only by ``Connection.receive``)

Every :class:`ProtocolError` carries the wire :class:`ErrorCode` that goes into the
GOAWAY or RESET frame and an HTTP ``status_hint`` that relay/agent use when they
have to answer an HTTP client. The message text stays local (logs); the peer only
ever sees the code and a short reason chosen by the core.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NoReturn

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "TunnelError",
    "status_hint_for",
]


class ErrorCode(IntEnum):
    """Wire error codes of RESET and GOAWAY frames (u32 on the wire).

    Codes 0-7 mirror the meaning of their HTTP/2 namesakes (RFC 9113 section 7);
    the rest are tunnel specific. A receiver maps an unknown code to
    ``INTERNAL_ERROR`` (see :func:`tunnel.frames.decode_error_code`).
    """

    NO_ERROR = 0x00
    PROTOCOL_ERROR = 0x01
    INTERNAL_ERROR = 0x02
    FLOW_CONTROL_ERROR = 0x03
    FRAME_SIZE_ERROR = 0x04
    STREAM_CLOSED = 0x05
    REFUSED_STREAM = 0x06
    CANCEL = 0x07
    OPEN_TIMEOUT = 0x08
    IDLE_TIMEOUT = 0x09
    TOO_MANY_STREAMS = 0x0A
    CONNECT_FAILED = 0x0B
    TARGET_UNAVAILABLE = 0x0C
    FORBIDDEN = 0x0D
    NOT_FOUND = 0x0E
    GOING_AWAY = 0x0F
    PING_TIMEOUT = 0x10
    HANDSHAKE_TIMEOUT = 0x11
    ENHANCE_YOUR_CALM = 0x12


# Which HTTP status a relay/agent should answer with when a tunnel error has to be
# reported to an HTTP client. 502/504 for "the far side failed" (the tunnel is a
# gateway), 503 for "try again later", 4xx only for codes that mean the caller
# itself is not allowed or asked for something that does not exist.
_STATUS_HINTS: dict[ErrorCode, int] = {
    ErrorCode.NO_ERROR: 200,
    ErrorCode.PROTOCOL_ERROR: 502,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.FLOW_CONTROL_ERROR: 502,
    ErrorCode.FRAME_SIZE_ERROR: 502,
    ErrorCode.STREAM_CLOSED: 502,
    ErrorCode.REFUSED_STREAM: 503,
    ErrorCode.CANCEL: 502,
    ErrorCode.OPEN_TIMEOUT: 504,
    ErrorCode.IDLE_TIMEOUT: 504,
    ErrorCode.TOO_MANY_STREAMS: 429,
    ErrorCode.CONNECT_FAILED: 502,
    ErrorCode.TARGET_UNAVAILABLE: 503,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.GOING_AWAY: 503,
    ErrorCode.PING_TIMEOUT: 504,
    ErrorCode.HANDSHAKE_TIMEOUT: 504,
    ErrorCode.ENHANCE_YOUR_CALM: 429,
}


def status_hint_for(code: ErrorCode) -> int:
    """Return the HTTP status that best describes ``code`` to an HTTP client.

    Args:
        code: A wire error code.

    Returns:
        An HTTP status code (500 for a code without a specific mapping).
    """
    return _STATUS_HINTS.get(code, 500)


class TunnelError(Exception):
    """Base class of every exception the tunnel package raises on purpose."""


class ProtocolError(TunnelError):
    """Abstract base: a rule of tunnel v1 was broken.

    Raise :class:`LocalProtocolError` or :class:`RemoteProtocolError`; instantiating
    this class directly is refused (as in h11) so that every error says whose fault
    it was.

    Attributes:
        error_code: The wire code sent to the peer in GOAWAY or RESET.
        status_hint: An HTTP status for relay/agent to answer HTTP clients with.
    """

    error_code: ErrorCode
    status_hint: int

    def __init__(
        self,
        msg: str,
        error_code: ErrorCode = ErrorCode.PROTOCOL_ERROR,
        status_hint: int | None = None,
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise Local- or RemoteProtocolError")
        super().__init__(msg)
        self.error_code = error_code
        self.status_hint = status_hint if status_hint is not None else self._default_status()

    def _default_status(self) -> int:
        return status_hint_for(self.error_code)


class LocalProtocolError(ProtocolError):
    """Our caller (or our own core, before conversion) broke a protocol rule.

    Raised by ``send_*``-style methods of :class:`tunnel.connection.Connection`
    when the call is not allowed in the current state: it is a bug in the caller,
    hence ``status_hint`` 500 unless given.
    """

    def _default_status(self) -> int:
        return 500

    def _reraise_as_remote_protocol_error(self) -> NoReturn:
        """Re-raise this error as a :class:`RemoteProtocolError` (h11's pattern).

        Parsing code raises ``LocalProtocolError``; the receive boundary knows the
        input came from the peer and converts it here, keeping the code.

        Raises:
            RemoteProtocolError: always, chained to ``self``.
        """
        raise RemoteProtocolError(str(self), self.error_code) from self


class RemoteProtocolError(ProtocolError):
    """The peer broke a protocol rule; only :meth:`Connection.receive` raises it.

    When it is raised the core has already queued a GOAWAY with ``error_code``
    (and no exception text) and the connection is closed: flush
    ``data_to_send()`` and close the websocket.
    """
