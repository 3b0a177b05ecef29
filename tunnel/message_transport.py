"""The seam between a tunnel session and its websocket: ``MessageTransport``.

A session needs little from a websocket, the same as remotedialer's
``wsConn``: the negotiated subprotocol, send a binary message, receive the
next message, close with a code and a reason, and whether it is closed. This
module names that shape so that the session I/O (aio_session.py, aio_io.py)
depends on it and not on a websocket library: ``aio_ws_aiohttp.py`` is today's
implementation over aiohttp, tests run sessions over an in-memory pair
(tests/tunnel/fake_transport.py), and a later websocket of our own only has
to implement this.

Two additions let an implementation be fast on the hot path:

* ``send_many`` sends a batch in order with as few writes (system calls,
  TLS records) as the implementation can manage: the session's writer always
  has a list of frames, and one write per frame was the largest single cost
  of a bulk transfer. ``send_now`` is its synchronous variant, used when
  nothing is in flight, to skip a task hop on small round trips.
* ``set_receiver`` switches the transport to push delivery: binary messages
  are handed to a callback on the loop thread as they are parsed, instead
  of waking the session's reader task once per message.

Stdlib only (no asyncio import): the core's rule (see tunnel/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_OK",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "BinaryReceiver",
    "MessageTransport",
    "TransportClosed",
]

# RFC 6455 section 7.4.1 close codes the session uses.
CLOSE_OK = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

BinaryReceiver = Callable[[bytes], bool]
"""``on_binary(payload) -> bool``: False once the session takes no more
messages this way (it is closing); later binary messages then queue for
``receive()``."""


class TransportClosed(Exception):
    """``receive()`` on a transport that is closed or closing.

    ``code`` is the peer's close code when a close frame arrived (None when
    the connection was lost); a transport error, if any, is ``__cause__``.
    """

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"websocket closed ({code}): {reason}" if code else "websocket closed")
        self.code = code
        self.reason = reason


@runtime_checkable
class MessageTransport(Protocol):
    """One websocket as the tunnel session sees it (see the module docstring).

    Every method is called on the loop thread; sends are never concurrent
    (the session has one writer).
    """

    @property
    def subprotocol(self) -> str | None:
        """The negotiated websocket subprotocol (None: none was)."""
        ...

    @property
    def closed(self) -> bool:
        """True once a close frame went either way or the connection is gone."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one binary message.

        Raises:
            ConnectionError, RuntimeError, OSError: the transport is closing or gone.
        """
        ...

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send each of ``messages`` as one binary message, in order, corked
        into as few writes as possible; raises as ``send`` does."""
        ...

    def send_now(self, messages: Sequence[bytes]) -> bool:
        """Write ``messages`` synchronously if that cannot block.

        Only called while no ``send``/``send_many`` is in progress (order).

        Returns:
            False (nothing written) when the write would have to wait: the
            caller then uses ``send_many``. Raises as ``send`` does.
        """
        ...

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water
        mark (``send``/``send_many`` already do so before returning)."""
        ...

    async def receive(self) -> bytes | str:
        """The next message: ``bytes`` (binary) or ``str`` (text).

        Raises:
            TransportClosed: The websocket is closed or failed.
        """
        ...

    def set_receiver(self, on_binary: BinaryReceiver) -> bool:
        """Deliver binary messages to ``on_binary`` as they arrive, on the
        loop thread, instead of through ``receive()``; other messages (and
        binary ones queued behind them) still come through ``receive()``, in
        order. Call before awaiting ``receive()``.

        Returns:
            False when this transport cannot push: keep using ``receive()``.
        """
        ...

    async def close(self, code: int = CLOSE_OK, reason: bytes = b"") -> None:
        """Send a close frame (``reason`` at most 123 bytes), wait for the
        peer's, and release the connection. Idempotent."""
        ...
