"""``TunnelStream``: one multiplexed byte stream, with real back-pressure.

Theory of operation: the stream holds no credit of its own. ``write`` asks the
core how much it may send (``send_window``: min of stream and session credit),
queues that much with ``send_data`` and, when the credit is zero, parks until
the session sees a WINDOW for this stream or for the session. ``read`` hands
out buffered DATA and only then tells the core the bytes were consumed
(``acknowledge_received_data``), which is what returns credit to the peer. So
a reader that stops reading stops the sender of that stream only, and the
bytes buffered here never exceed the window we granted.

Waiters are plain futures (one reader, one writer at a time, as with asyncio
streams); the session wakes them from its dispatch loop.

Memory: a relay holds two streams per routed kubectl connection, most of them
idle (watches, ``logs -f``), so a stream is kept small: ``__slots__``, and
the receive buffer (a deque, ~0.7 KiB even when empty) and the waiters' futures
exist only while something is buffered or somebody waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING

from tunnel.aio_errors import StreamRefused, StreamReset, TunnelClosed
from tunnel.errors import ErrorCode, LocalProtocolError

if TYPE_CHECKING:
    from tunnel.aio_forward import StreamHook
    from tunnel.aio_session import TunnelSession

__all__ = ["TunnelStream"]

DEFAULT_READ_SIZE = 65536


class TunnelStream:
    """One stream of a ``TunnelSession``; created by the session, never directly.

    Attributes:
        id: The stream id (odd when the client side opened it).
        target: The OPEN payload, e.g. ``b"rg/cluster"`` or ``b"127.0.0.1:6443"``.
    """

    __slots__ = (
        "_accepted", "_bridge", "_buf", "_buffered", "_core", "_eof", "_error", "_fin_sent",
        "_idle_moved", "_idle_since", "_open_waiter", "_read_waiter", "_rejected", "_session",
        "_write_waiter", "bytes_received", "bytes_sent", "id", "incoming", "target",
    )

    def __init__(
        self, session: TunnelSession, stream_id: int, target: bytes, *, incoming: bool
    ) -> None:
        self._session = session
        self._core = session._core
        self.id = stream_id
        self.target = target
        self.incoming = incoming
        # accepted: OPEN_OK sent (incoming) or received (outgoing).
        self._accepted = False
        self._rejected = False
        # Received DATA not read yet; None while empty (see _buffer, _release).
        self._buf: deque[bytes] | None = None
        self._buffered = 0
        self._eof = False  # peer sent FIN: the read side is complete
        self._fin_sent = False
        self._error: StreamReset | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._open_waiter: asyncio.Future[None] | None = None
        # Byte counters (DATA payload) for metrics and the idle sweeper; the
        # sweeper compares them over time, so the hot path needs no clock.
        self.bytes_received = 0
        self.bytes_sent = 0
        # Set while forward_streams joins this stream to another (aio_forward.py):
        # the session's events then go to the bridge instead of the waiters.
        self._bridge: StreamHook | None = None
        # The idle sweep's last look (aio_io.SessionIO._on_idle_sweep_due): bytes
        # moved then, and since when that count has not changed.
        self._idle_moved = -1
        self._idle_since = 0.0

    def __repr__(self) -> str:
        return f"<TunnelStream {self.id} {self.target!r}>"

    # ----------------------------------------------------------- state helpers

    @property
    def done(self) -> bool:
        """True once both directions are finished or the stream was reset."""
        return self._error is not None or (self._eof and self._fin_sent) or self._rejected

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet (never more than the granted window)."""
        return self._buffered

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise StreamReset(self._error.code, self._error.reason)
        if self._session._closed:
            raise self._session._closed_error()

    # ----------------------------------------------------------------- reading

    async def read(self, max_bytes: int = DEFAULT_READ_SIZE) -> bytes:
        """Read up to ``max_bytes`` bytes; returns b"" once the peer sent FIN.

        Consumed bytes are acknowledged to the core, which returns credit to
        the peer (WINDOW frames are batched by the core).

        Raises:
            StreamReset: The stream was reset (by the peer, a timeout, or us).
            TunnelClosed: The session died before the peer finished sending.
            ValueError: ``max_bytes`` < 1 (b"" is reserved for FIN).
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        while True:
            if self._error is not None:
                raise StreamReset(self._error.code, self._error.reason)
            if self._buf:
                return self._take(self._buf, max_bytes)
            if self._eof:
                return b""
            if self._session._closed:
                raise self._session._closed_error()
            if self._read_waiter is not None:
                raise RuntimeError("read() called while another coroutine is already reading")
            fut = self._read_waiter = self._session._loop.create_future()
            try:
                await fut
            finally:
                self._read_waiter = None

    def _take(self, buf: deque[bytes], max_bytes: int) -> bytes:
        first = buf[0]
        if len(first) >= max_bytes:
            if len(first) == max_bytes:
                data = buf.popleft()
            else:
                data = first[:max_bytes]
                buf[0] = first[max_bytes:]
        else:
            # Join whole chunks up to max_bytes: one copy is cheaper than a
            # read() call per 16 KiB frame.
            parts = [buf.popleft()]
            size = len(first)
            while buf and size + len(buf[0]) <= max_bytes:
                chunk = buf.popleft()
                parts.append(chunk)
                size += len(chunk)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not buf:
            self._buf = None  # an idle stream keeps no empty deque
        n = len(data)
        self._buffered -= n
        session = self._session
        if not session._closed and self._error is None:
            try:
                self._core.acknowledge_received_data(self.id, n)
            except LocalProtocolError:
                # The core already forgot the stream (closed both ways) and
                # returned its credit to the session itself.
                pass
            session._kick()
        return data

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes.

        Raises:
            asyncio.IncompleteReadError: FIN came first.
            StreamReset, TunnelClosed: as for ``read``.
        """
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def at_eof(self) -> bool:
        """True when the peer sent FIN and everything was read."""
        return self._eof and not self._buf

    # ----------------------------------------------------------------- writing

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` to the core, waiting for credit as needed.

        Returns once every byte is queued (credit was available for it); the
        session's writer task puts the frames on the websocket.

        Raises:
            StreamReset: The stream was reset.
            TunnelClosed: The session is closed.
            RuntimeError: ``write_eof`` was already called, or the stream is
                an incoming one not accepted yet.
        """
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        total = len(view)
        self._raise_if_broken()
        if self._fin_sent:
            raise RuntimeError("write() after write_eof()")
        if not self._accepted:
            raise RuntimeError("write() before accept()")
        if not total:
            return
        core = self._core
        sid = self.id
        session = self._session
        offset = 0
        while True:
            credit = core.send_window(sid)
            if credit > 0:
                n = total - offset
                if n > credit:
                    n = credit
                if offset == 0 and n == total:
                    core.send_data(sid, view)
                else:
                    core.send_data(sid, memoryview(view)[offset : offset + n])
                offset += n
                session._kick()
                if offset >= total:
                    self.bytes_sent += total
                    return
            else:
                await self._wait_credit()
                self._raise_if_broken()

    async def _wait_credit(self) -> None:
        if self._write_waiter is not None:
            raise RuntimeError("write() called while another coroutine is waiting for credit")
        fut = self._write_waiter = self._session._loop.create_future()
        self._session._blocked_writers.add(self)
        try:
            await fut
        finally:
            self._write_waiter = None
            self._session._blocked_writers.discard(self)

    async def drain(self) -> None:
        """Compatibility with asyncio.StreamWriter: ``write`` already waited."""
        self._raise_if_broken()

    async def write_eof(self) -> None:
        """Send FIN (half close): the peer's reader sees b"" after our data.

        Raises:
            StreamReset, TunnelClosed: The stream can no longer be used.
        """
        if self._fin_sent:
            return
        self._raise_if_broken()
        if not self._accepted:
            raise RuntimeError("write_eof() before accept()")
        self._send_fin()

    def _send_fin(self) -> None:
        self._fin_sent = True
        self._core.send_fin(self.id)
        self._session._kick()
        self._session._maybe_forget(self)

    def can_write_eof(self) -> bool:
        """Always True: streams support half close."""
        return True

    # -------------------------------------------------------- open / accept / close

    def accept(self) -> None:
        """Accept an incoming stream (queues OPEN_OK). Call once, in ``on_stream``."""
        if self._accepted or not self.incoming:
            return
        self._raise_if_broken()
        self._accepted = True
        self._core.accept_stream(self.id)
        self._session._kick()

    def reject(self, code: ErrorCode = ErrorCode.REFUSED_STREAM, reason: str = "") -> None:
        """Refuse an incoming stream: the opener's ``open_stream`` raises StreamRefused.

        Args:
            code: Wire error code, e.g. CONNECT_FAILED or FORBIDDEN.
            reason: A short reason for the peer (never exception text).
        """
        if self._accepted:
            self.reset(code, reason)
            return
        if self._rejected or self._error is not None:
            return
        self._rejected = True
        self._reset_core(code, reason)
        self._error = StreamReset(code, reason)
        self._session._forget(self)

    def reset(self, code: ErrorCode = ErrorCode.CANCEL, reason: str = "") -> None:
        """Abort the stream both ways; frees its credit. Never raises.

        Args:
            code: Wire error code sent to the peer.
            reason: A short reason for the peer (never exception text).
        """
        if self._error is not None:
            return
        self._error = StreamReset(code, reason)
        self._reset_core(code, reason)
        self._wake_all()
        self._session._forget(self)
        if self._bridge is not None:
            self._bridge.on_reset(self)

    def _reset_core(self, code: ErrorCode, reason: str) -> None:
        if self._session._closed:
            return
        try:
            self._core.reset_stream(self.id, code, reason)
        except LocalProtocolError:
            # Already closed in the core (both FINs seen): nothing to abort.
            pass
        self._session._kick()

    async def aclose(self) -> None:
        """Finish with the stream: FIN if not sent; reset with CANCEL if the peer
        is still sending (so its credit is freed); release the buffer.

        To end gracefully, call ``write_eof()`` and read until b"" first.
        """
        self._close()

    def _close(self) -> None:
        """``aclose`` without a coroutine (it never waits): for a join that
        ends from a callback (aio_forward.join_streams)."""
        if self._error is not None or self._session._closed:
            self._release()
            return
        if self.incoming and not self._accepted:
            self.reject(ErrorCode.REFUSED_STREAM)
            return
        if not self._eof:
            self.reset(ErrorCode.CANCEL)
        elif not self._fin_sent:
            if not self._accepted:
                raise RuntimeError("write_eof() before accept()")
            self._send_fin()
        self._release()

    def _release(self) -> None:
        self._buf = None
        self._buffered = 0
        self._session._forget(self)

    def _buffer(self, data: bytes) -> deque[bytes]:
        """Append received DATA to the read buffer (created on first use)."""
        buf = self._buf
        if buf is None:
            buf = self._buf = deque()
        buf.append(data)
        n = len(data)
        self._buffered += n
        self.bytes_received += n
        return buf

    # -------------------------------------------------------------- join API
    # For code that moves a stream's bytes itself instead of read()/write():
    # the relay's bridge (aio_forward.py) and the socket splice (aio_socket.py).
    # A join sets a hook; the session's events for this stream then go to it.

    @property
    def session(self) -> TunnelSession:
        """The session this stream belongs to."""
        return self._session

    @property
    def error(self) -> StreamReset | None:
        """Why the stream was reset or refused (None while it was not)."""
        return self._error

    @property
    def eof_received(self) -> bool:
        """True once the peer sent FIN (nothing more will arrive)."""
        return self._eof

    @property
    def fin_sent(self) -> bool:
        """True once our FIN was queued."""
        return self._fin_sent

    @property
    def hook(self) -> StreamHook | None:
        """The join that takes this stream's events (None: the waiters do)."""
        return self._bridge

    def set_hook(self, hook: StreamHook | None) -> None:
        """Send this stream's events to ``hook`` (None: back to the waiters,
        and stop asking for session credit)."""
        self._bridge = hook
        if hook is None:
            self._session._blocked_writers.discard(self)

    def hold(self, data: bytes) -> None:
        """Keep received ``data`` until it is taken (``held``) and acknowledged."""
        self._buffer(data)

    @property
    def held(self) -> deque[bytes] | None:
        """Received bytes not consumed yet, oldest first (None while empty).
        A join pops what it passes on, then calls ``acknowledge``."""
        return self._buf

    def drop_held(self) -> None:
        """Forget the (now empty) held deque: an idle stream keeps none."""
        self._buf = None

    def take_held(self) -> list[bytes]:
        """Take every held chunk (not acknowledged yet: ``acknowledge`` them
        once consumed); ``bytes_received`` no longer counts them."""
        chunks = list(self._buf or ())
        self._buf = None
        self._buffered = 0
        self.bytes_received -= sum(map(len, chunks))
        return chunks

    def consume_held(self, n: int) -> None:
        """``n`` bytes popped from ``held`` were passed on: ``acknowledge`` them."""
        self._buffered -= n
        self.acknowledge(n)

    def acknowledge(self, n: int) -> None:
        """``n`` received bytes were consumed: return their stream credit to the peer."""
        session = self._session
        if not session._closed:
            with contextlib.suppress(LocalProtocolError):
                self._core.acknowledge_received_data(self.id, n)
            session._kick()

    def send_credit(self) -> int:
        """Bytes ``queue_data`` may send now (stream and session credit)."""
        return self._core.send_window(self.id)

    def queue_data(self, data: bytes | memoryview) -> None:
        """Queue DATA within ``send_credit()``; ``flush()`` sends it.

        Raises:
            LocalProtocolError: The stream can no longer send.
        """
        self._core.send_data(self.id, data)
        self.bytes_sent += len(data)

    def flush(self) -> None:
        """Send what was queued (coalesced with the session's other output)."""
        self._session._kick()

    def want_credit(self, wanted: bool) -> None:
        """Ask (or stop asking) for the hook's ``on_credit`` when the session's
        credit comes back; the stream's own WINDOW always reaches it."""
        if wanted:
            self._session._blocked_writers.add(self)
        else:
            self._session._blocked_writers.discard(self)

    def finish_sending(self) -> None:
        """Send FIN now if it can still be sent (a join forwarding the peer's);
        never raises."""
        if self._fin_sent or self._error is not None or self._session._closed:
            return
        self._fin_sent = True
        with contextlib.suppress(LocalProtocolError):
            self._core.send_fin(self.id)
        self._session._kick()
        self._session._maybe_forget(self)

    def close_now(self) -> None:
        """``aclose`` without a coroutine (it never waits): for a join that
        ends from a callback."""
        self._close()

    # ------------------------------------------------- called by the session

    def _on_data(self, data: bytes) -> None:
        if self._bridge is not None:
            self._bridge.on_data(self, data)
            return
        self._buffer(data)
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_fin(self) -> None:
        self._eof = True
        self._wake(self._read_waiter)
        if self._bridge is not None:
            self._bridge.on_fin(self)

    def _on_reset(self, code: int, reason: str) -> None:
        if self._error is None:
            self._error = StreamReset(code, reason)
        self._buf = None
        self._buffered = 0
        if self._open_waiter is not None and not self._open_waiter.done():
            self._open_waiter.set_exception(StreamRefused(code, reason))
        self._wake_all()
        if self._bridge is not None:
            self._bridge.on_reset(self)

    def _on_accepted(self) -> None:
        self._accepted = True
        self._wake(self._open_waiter)

    def _on_credit(self) -> None:
        if self._bridge is not None:
            self._bridge.on_credit(self)
        else:
            self._wake(self._write_waiter)

    def _on_session_closed(self, exc: TunnelClosed) -> None:
        if self._open_waiter is not None and not self._open_waiter.done():
            self._open_waiter.set_exception(exc)
        self._wake_all()
        if self._bridge is not None:
            self._bridge.on_closed(self)

    def _wake_all(self) -> None:
        self._wake(self._read_waiter)
        self._wake(self._write_waiter)
        self._wake(self._open_waiter)

    @staticmethod
    def _wake(fut: asyncio.Future[None] | None) -> None:
        if fut is not None and not fut.done():
            fut.set_result(None)
