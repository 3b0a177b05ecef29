"""Stream <-> TCP socket without tasks or read buffers (``splice``'s fast path).

Theory of operation. ``SocketSplice`` becomes the socket transport's protocol
(``transport.set_protocol``) after taking whatever asyncio's StreamReader had
already buffered, and the stream's hook (``TunnelStream.set_hook``):

* socket -> stream: each ``data_received`` chunk (up to 256 KiB) goes to the
  core's ``send_data`` as far as the stream's credit allows (the core cuts it
  into frames; no intermediate copy). Without credit the rest is held and the
  transport stops reading until a WINDOW arrives: at most one read is held.
  EOF becomes FIN once nothing is held.
* stream -> socket: each DATA chunk is written to the transport (one write
  per socket read of the websocket: see ``aio_io.WriteBatch``) and
  acknowledged at once, which returns credit to the peer, unless the
  transport asked us to pause writing; then the acknowledgements wait for
  ``resume_writing``. So the socket's buffer never holds more than the
  transport's high-water mark plus the stream window. FIN becomes
  ``write_eof``.
* A RESET or a dead session aborts the socket; a socket error (the local
  peer closed or reset its connection at any moment, e.g. ENOTCONN from
  ``write_eof``) resets only this stream with CANCEL, logged as one line: it
  never reaches the session's dispatch, so every other stream goes on.

It relies on two StreamReader attributes (``_buffer``, ``_eof``); ``attach``
returns None when they are missing and ``splice`` then copies with two tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from tunnel.aio_io import BATCH
from tunnel.errors import ErrorCode, LocalProtocolError

if TYPE_CHECKING:
    from tunnel.aio_stream import TunnelStream

__all__ = ["SocketSplice", "attach"]

log = logging.getLogger("tunnel")


class SocketSplice(asyncio.Protocol):
    """Joins one accepted stream and one socket transport (module docstring).

    Created by ``attach``; await ``done`` for the end.
    """

    def __init__(self, stream: TunnelStream, transport: Any) -> None:
        self.stream = stream
        self.transport = transport
        self._session = stream.session
        self._held: deque[bytes | memoryview] = deque()  # socket bytes without credit yet
        self._socket_eof = False  # the socket sent EOF
        self._fin_sent = False  # ... and it became FIN on the stream
        self._eof_written = False  # the stream's FIN became write_eof
        self._write_paused = False
        self._unacked = 0  # written to the socket, not yet acknowledged
        self._out: list[bytes] = []  # stream bytes waiting for the batch end
        self._batched = False  # in BATCH.pending (see aio_io.WriteBatch)
        self.failed = False
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()  # both ways ended
        self.lost: asyncio.Future[None] = loop.create_future()  # connection_lost ran

    # ----------------------------------------------------- socket -> stream

    def data_received(self, data: bytes) -> None:
        """asyncio: bytes from the socket."""
        if self._held:
            self._held.append(data)
            return
        rest = self._send(data)
        if rest is not None:
            self._held.append(rest)

    def eof_received(self) -> bool:
        """asyncio: the socket half-closed; keep writing to it."""
        self._socket_eof = True
        if not self._held:
            self._send_fin()
        return True

    def _send(self, data: bytes | memoryview) -> bytes | memoryview | None:
        """Queue as much of ``data`` as the credit allows; return the rest
        (then reading is paused until a WINDOW) or None."""
        stream = self.stream
        if stream.error is not None or self._session.closed:
            return None
        credit = stream.send_credit()
        n = len(data)
        rest: bytes | memoryview | None = None
        try:
            if credit >= n:
                stream.queue_data(data)
            elif credit > 0:
                view = memoryview(data)
                stream.queue_data(view[:credit])
                rest = view[credit:]
                n = credit
            else:
                rest = data
                n = 0
        except LocalProtocolError:
            self._abort_stream()
            return None
        if n:
            stream.flush()
        if rest is not None:
            self.transport.pause_reading()
            stream.want_credit(True)
        return rest

    def _send_fin(self) -> None:
        stream = self.stream
        if self._fin_sent or stream.error is not None or self._session.closed:
            return
        self._fin_sent = True
        stream.finish_sending()
        self._maybe_done()

    # ----------------------------------------------- hooks from TunnelStream

    def on_credit(self, stream: TunnelStream) -> None:
        """WINDOW for the stream or its session: send what is held."""
        held = self._held
        while held:
            rest = self._send(held[0])
            if rest is not None:
                held[0] = rest  # still short of credit: wait for the next WINDOW
                return
            held.popleft()
        stream.want_credit(False)
        if self._socket_eof:
            self._send_fin()
        else:
            self.transport.resume_reading()

    def on_data(self, stream: TunnelStream, data: bytes) -> None:
        """DATA from the peer: to the socket at the end of this batch."""
        stream.bytes_received += len(data)
        self._out.append(data)
        batch = BATCH
        if batch.depth:
            if not self._batched:
                self._batched = True
                batch.pending.append(self)
        else:
            self._kick()

    def _kick(self) -> None:
        """Write what ``on_data`` collected (also the end of a WriteBatch)."""
        out = self._out
        if not out:
            return
        self._out = []
        n = sum(map(len, out)) if len(out) > 1 else len(out[0])
        if self.transport.is_closing():
            return
        try:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        except (OSError, RuntimeError) as exc:
            self._socket_failed(exc)
            return
        if self._write_paused:
            self._unacked += n
        else:
            self._ack(n)

    def _ack(self, n: int) -> None:
        stream = self.stream
        if n and stream.error is None:
            stream.acknowledge(n)

    def on_fin(self, stream: TunnelStream) -> None:
        """The peer sent FIN: half-close the socket after the data."""
        self._kick()
        if self._eof_written or self.transport.is_closing():
            return
        self._eof_written = True
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
        except (OSError, RuntimeError) as exc:
            # The local peer is already gone (ENOTCONN after its RST): this
            # stream ends, nothing else does.
            self._socket_failed(exc)
            return
        self._maybe_done()

    def on_reset(self, stream: TunnelStream) -> None:
        """The stream was reset (either way): abort the socket."""
        self._fail()

    def on_closed(self, stream: TunnelStream) -> None:
        """The session died: abort the socket."""
        self._fail()

    # ----------------------------------------------------- socket lifetime

    def pause_writing(self) -> None:
        """asyncio: the socket's buffer is full; hold the acknowledgements."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """asyncio: the socket drained; acknowledge what was held back."""
        self._write_paused = False
        n, self._unacked = self._unacked, 0
        self._ack(n)

    def connection_lost(self, exc: Exception | None) -> None:
        """asyncio: the socket is gone."""
        if not self.lost.done():
            self.lost.set_result(None)
        stream = self.stream
        if not self.done.done():
            if not (self._fin_sent and self._eof_written):
                # Closed before both directions finished: a reset, not an end.
                if stream.error is None:
                    stream.set_hook(None)
                    stream.reset(ErrorCode.CANCEL, "connection reset")
                self.failed = True
            self._finish()

    def _socket_failed(self, exc: BaseException) -> None:
        """The local socket failed under a write: reset this stream only."""
        stream = self.stream
        log.info(
            "%s x stream %d: local connection failed (%s): reset CANCEL",
            self._session.name, stream.id, _describe(exc),
        )
        self._abort_stream()

    def _abort_stream(self) -> None:
        self.stream.reset(ErrorCode.CANCEL, "connection reset")
        self._fail()

    def _fail(self) -> None:
        self.failed = True
        self._held.clear()
        self._out = []
        self.transport.abort()
        self._finish()

    def _maybe_done(self) -> None:
        if self._fin_sent and self._eof_written:
            self._finish()

    def _finish(self) -> None:
        self.stream.set_hook(None)
        if not self.done.done():
            self.done.set_result(None)


def _describe(exc: BaseException) -> str:
    """Exception type and errno name for a log line (no message text)."""
    errno_ = getattr(exc, "errno", None)
    return f"{type(exc).__name__} errno {errno_}" if errno_ is not None else type(exc).__name__


def attach(stream: TunnelStream, reader: asyncio.StreamReader, transport: Any) -> SocketSplice | None:
    """Make a ``SocketSplice`` the transport's protocol and the stream's hook.

    Returns:
        The splice (forwarding already what both sides had buffered), or None
        when this asyncio's StreamReader lacks the expected attributes.
    """
    buffered = getattr(reader, "_buffer", None)
    eof = getattr(reader, "_eof", None)
    if not isinstance(buffered, bytearray) or not isinstance(eof, bool):
        return None
    splice = SocketSplice(stream, transport)
    if reader.exception() is not None or (transport.is_closing() and not eof):
        # The connection was reset (or aborted) before the join: its
        # connection_lost already went to the StreamReader, so the splice
        # would never hear of it. End the stream now.
        stream.set_hook(splice)
        log.info(
            "%s x stream %d: local connection gone before the stream opened: reset CANCEL",
            stream.session.name, stream.id,
        )
        splice._abort_stream()
        if not splice.lost.done():
            splice.lost.set_result(None)
        return splice
    transport.set_protocol(splice)
    stream.set_hook(splice)
    pending = bytes(buffered)
    buffered.clear()
    # The StreamReader may have paused reading when its buffer filled.
    if not transport.is_closing() and not transport.is_reading():
        transport.resume_reading()
    # DATA that arrived before the splice started (e.g. server speaks first);
    # on_data counts it again and acknowledges it once written.
    for chunk in stream.take_held():
        splice.on_data(stream, chunk)
    if pending:
        splice.data_received(pending)
    if eof:
        splice.eof_received()
    if stream.error is not None or stream.session.closed:
        splice._fail()
    elif stream.eof_received:
        splice.on_fin(stream)
    return splice
