"""Frame-level forwarding between two streams (the relay's router).

Theory of operation. ``StreamBridge`` joins stream A and stream B (usually on
two sessions: a client's and an agent's) without a task or a read buffer of
its own. The sessions' dispatch calls into it (``TunnelStream`` delegates its
``_on_*`` hooks while ``_bridge`` is set):

* DATA for A is passed straight to B's core (``send_data``) as far as B's send
  credit (stream and session) allows; the rest is held in A's receive buffer.
  A's core returned the session credit on receipt; A's bytes are acknowledged
  to A's core, which returns *stream* credit to A's peer, only once they were
  passed to B's session. So what the relay holds for a pair never exceeds the
  stream windows it granted, whatever the far side does, and a stalled pair
  never holds session credit the other streams of either session need.
* WINDOW for B (stream or session) forwards what A holds.
* FIN on A becomes FIN on B once A's held bytes are gone; RESET on either
  side resets the other with the same code and reason; a dead session resets
  the other side with CANCEL.

Nothing inside DATA is parsed; each chunk is passed as received (no copy) and
shown to an optional ``on_bytes`` callback (the relay's metrics).

Two ways to run a join: ``forward_streams`` awaits its end (a task per pair);
``join_streams`` returns at once and calls ``on_done`` when the pair ended,
so an idle routed pair costs the relay two streams and one bridge, no task,
no coroutine frames and no future (the bridge has ``__slots__``; its future
exists only if somebody awaits ``wait``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tunnel.aio_errors import StreamError, TunnelClosed
from tunnel.errors import ErrorCode, LocalProtocolError

if TYPE_CHECKING:
    from tunnel.aio_stream import TunnelStream

__all__ = ["BytesCallback", "StreamBridge", "StreamHook", "forward_streams", "join_streams"]

log = logging.getLogger("tunnel")

# Gets each forwarded chunk (as received, or a part of it).
BytesCallback = Callable[[bytes | memoryview], None]

# Bits of StreamBridge._fins: FIN from a (resp. b) forwarded to the other side.
_FIN_FROM_A = 1
_FIN_FROM_B = 2
_FIN_BOTH = _FIN_FROM_A | _FIN_FROM_B


class StreamHook(Protocol):
    """Takes a stream's events instead of its waiters while a join runs:
    ``StreamBridge`` (below) or ``SocketSplice`` (aio_socket.py)."""

    def on_data(self, stream: TunnelStream, data: bytes) -> None: ...
    def on_credit(self, stream: TunnelStream) -> None: ...
    def on_fin(self, stream: TunnelStream) -> None: ...
    def on_reset(self, stream: TunnelStream) -> None: ...
    def on_closed(self, stream: TunnelStream) -> None: ...


class StreamBridge:
    """Joins two accepted streams; see the module docstring.

    Args:
        a: One stream (its DATA goes to ``b``).
        b: The other stream (its DATA goes to ``a``).
        on_a_to_b: Called with each chunk passed from ``a`` to ``b``.
        on_b_to_a: Called with each chunk passed from ``b`` to ``a``.
        on_done: Called once, from the event loop soon after the pair ended,
            once both streams were closed (``join_streams``). None: the
            caller awaits ``wait()`` and closes the streams itself.

    Call ``start()`` next, then await ``wait()``; ``forward_streams`` does both.
    """

    __slots__ = ("_done", "_fins", "_on_a_to_b", "_on_b_to_a", "_on_done", "a", "b", "finished")

    def __init__(
        self,
        a: TunnelStream,
        b: TunnelStream,
        on_a_to_b: BytesCallback | None = None,
        on_b_to_a: BytesCallback | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.a = a
        self.b = b
        self._on_a_to_b = on_a_to_b
        self._on_b_to_a = on_b_to_a
        self._on_done = on_done
        self._fins = 0  # _FIN_FROM_A | _FIN_FROM_B as forwarded
        self.finished = False
        # Created only by wait(): a joined pair nobody awaits needs none.
        self._done: asyncio.Future[None] | None = None

    def other(self, stream: TunnelStream) -> TunnelStream:
        """The stream on the other side of ``stream``."""
        return self.b if stream is self.a else self.a

    def start(self) -> None:
        """Attach to both streams and forward whatever they already hold."""
        a, b = self.a, self.b
        a.set_hook(self)
        b.set_hook(self)
        for stream in (a, b):
            if stream.error is not None:
                self.on_reset(stream)
                return
            if stream.session.closed:
                self.on_closed(stream)
                return
        self._pump(a)
        self._pump(b)

    async def wait(self) -> None:
        """Return once both directions ended (FIN both ways, or a reset)."""
        if self.finished:
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)

    # ------------------------------------------------ called by TunnelStream

    def on_data(self, src: TunnelStream, data: bytes) -> None:
        """DATA arrived for ``src``: pass it on (or hold it without credit)."""
        src.hold(data)
        self._pump(src)

    def on_credit(self, dst: TunnelStream) -> None:
        """``dst`` (or its session) got WINDOW: forward what the other side holds."""
        self._pump(self.other(dst))

    def on_fin(self, src: TunnelStream) -> None:
        """``src``'s peer sent FIN: forward it after the held bytes."""
        self._pump(src)

    def on_reset(self, stream: TunnelStream) -> None:
        """``stream`` was reset (either way): reset the other with the same code."""
        if self.finished:
            return
        err = stream.error
        code: ErrorCode | int = err.code if err is not None else ErrorCode.CANCEL
        reason = err.reason if err is not None else "other side closed"
        self._finish()
        self.other(stream).reset(code, reason)  # type: ignore[arg-type]

    def on_closed(self, stream: TunnelStream) -> None:
        """``stream``'s session died: reset the other side with CANCEL."""
        if self.finished:
            return
        self._finish()
        self.other(stream).reset(ErrorCode.CANCEL, "other side closed")

    # ------------------------------------------------------------- internals

    def _pump(self, src: TunnelStream) -> None:
        if self.finished:
            return
        dst = self.other(src)
        buf = src.held
        if buf:
            send_credit = dst.send_credit
            queue_data = dst.queue_data
            on_bytes = self._on_a_to_b if src is self.a else self._on_b_to_a
            moved = 0
            try:
                while buf:
                    credit = send_credit()
                    if credit <= 0:
                        break
                    chunk = buf[0]
                    if len(chunk) <= credit:
                        buf.popleft()
                    else:
                        # Partial credit: rare (credit comes back in half
                        # windows, frames are 64 KiB), so a copy is fine.
                        buf[0] = chunk[credit:]
                        chunk = chunk[:credit]
                    queue_data(chunk)
                    moved += len(chunk)
                    if on_bytes is not None:
                        on_bytes(chunk)
            except LocalProtocolError:
                # dst can no longer send (closed under us): abort the pair.
                self._finish()
                src.reset(ErrorCode.CANCEL, "other side closed")
                dst.reset(ErrorCode.CANCEL, "other side closed")
                return
            if moved:
                dst.flush()
                src.consume_held(moved)
            if buf:
                dst.want_credit(True)  # a session WINDOW must reach on_credit
                return
            dst.want_credit(False)
            src.drop_held()  # all passed on: an idle pair keeps no empty deque
        fin_bit = _FIN_FROM_A if src is self.a else _FIN_FROM_B
        if src.eof_received and not self._fins & fin_bit:
            self._fins |= fin_bit
            dst.finish_sending()
            if self._fins == _FIN_BOTH:
                self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        for stream in (self.a, self.b):
            stream.set_hook(None)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        if self._on_done is not None:
            # Not now: _finish runs before the other side's reset is sent
            # (on_reset, on_closed); by the next loop turn both ends are final.
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        """join_streams: close both streams (as forward_streams' finally does),
        then tell the owner."""
        for stream in (self.a, self.b):
            try:
                stream.close_now()
            except (StreamError, TunnelClosed):
                pass
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            try:
                on_done()
            except Exception:
                # The owner's bug: one record with the traceback, the
                # sessions and their other streams go on.
                log.exception("stream join %d/%d: on_done failed", self.a.id, self.b.id)


def join_streams(
    a: TunnelStream,
    b: TunnelStream,
    *,
    on_a_to_b: BytesCallback | None = None,
    on_b_to_a: BytesCallback | None = None,
    on_done: Callable[[], None] | None = None,
) -> StreamBridge:
    """Join two accepted streams and return at once (no task per pair).

    Forwarding is ``forward_streams``' (FIN as FIN, RESET with the same code,
    a dead session resets the other side with CANCEL), driven by the
    sessions' dispatch. The pair belongs to the join from now on: an
    ``on_stream`` handler that joined its stream may return, and the session
    leaves the stream open. When both directions ended, both streams are
    closed (as ``aclose``) and then ``on_done()`` is called, once, from the
    event loop.

    Args:
        a: One stream.
        b: The other stream.
        on_a_to_b: Called with each chunk forwarded from ``a`` to ``b`` (metrics).
        on_b_to_a: Called with each chunk forwarded from ``b`` to ``a``.
        on_done: Called once after the pair ended and both streams were closed.

    Returns:
        The bridge (``finished`` says whether the pair ended).
    """
    bridge = StreamBridge(a, b, on_a_to_b, on_b_to_a, on_done)
    bridge.start()
    return bridge


async def forward_streams(
    a: TunnelStream,
    b: TunnelStream,
    *,
    on_a_to_b: BytesCallback | None = None,
    on_b_to_a: BytesCallback | None = None,
) -> None:
    """Forward frames between two accepted streams until both directions end.

    FIN is forwarded as FIN; a RESET on one side resets the other with the
    same code and reason; a dead session resets the other side with CANCEL.
    Both streams are closed (``aclose``) when it returns.

    Args:
        a: One stream.
        b: The other stream.
        on_a_to_b: Called with each chunk forwarded from ``a`` to ``b``.
        on_b_to_a: Called with each chunk forwarded from ``b`` to ``a``.
    """
    bridge = StreamBridge(a, b, on_a_to_b, on_b_to_a)
    try:
        bridge.start()
        await bridge.wait()
    except BaseException:
        bridge._finish()
        a.reset(ErrorCode.CANCEL, "cancelled")
        b.reset(ErrorCode.CANCEL, "cancelled")
        raise
    finally:
        for stream in (a, b):
            with contextlib.suppress(StreamError, TunnelClosed):
                await stream.aclose()
