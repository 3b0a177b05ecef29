"""Exceptions the asyncio adapter raises to its callers.

Exception tree (the core's part lives in ``tunnel.errors``)::

    TunnelError
    ├── ProtocolError (core) ── LocalProtocolError / RemoteProtocolError
    ├── StreamError                 a stream ended abnormally
    │   ├── StreamReset             the peer (or the session) reset the stream
    │   └── StreamRefused           OPEN answered with a RESET, or timed out
    └── TunnelClosed                the whole session is gone

``code`` and ``reason`` are what crossed the wire: a code and a short reason,
never exception text.
"""

from __future__ import annotations

from tunnel.errors import ErrorCode, TunnelError

__all__ = ["StreamError", "StreamRefused", "StreamReset", "TunnelClosed"]


class StreamError(TunnelError):
    """A single stream ended abnormally; the session goes on.

    Attributes:
        code: The wire error code.
        reason: The short reason sent with it (may be empty).
    """

    def __init__(self, code: ErrorCode | int, reason: str = "") -> None:
        try:
            code = ErrorCode(code)
        except ValueError:
            # An unknown code from a newer peer stays a plain int rather than failing.
            pass
        self.code = code
        self.reason = reason
        name = code.name if isinstance(code, ErrorCode) else str(code)
        super().__init__(f"{name}: {reason}" if reason else name)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.reason))


class StreamReset(StreamError):
    """The stream was reset: by the peer, by a timeout, or locally."""


class StreamRefused(StreamError):
    """``open_stream`` failed: the peer refused the OPEN, or it timed out."""


class TunnelClosed(TunnelError):
    """The session is closed; no stream on it can be used any more.

    Attributes:
        reason: Why the session ended, in a few words.
    """

    def __init__(self, reason: str = "tunnel closed") -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason,))
