"""``MessageTransport`` over a websocket of our own: an ``asyncio.Protocol``
with RFC 6455 framing, public APIs only.

Why our own framing and not the ``websockets`` package's sans-I/O protocol:
the tunnel sends one binary frame per tunnel frame (up to 64 KiB), so the
per-frame Python work is the cost; ``bench/ws_framing.py`` measures both on
the same input (ours: 1.3-3.4x less time per frame). Framing constants, the
encoder and the bounds are in aio_ws_frames.py; masking uses
``websockets.speedups.apply_mask`` (C), the only piece taken from there.

What the tunnel needs and nothing more:

* One writer path: every frame (data, pong, close) is framed and handed to
  the transport with one ``write`` per batch, synchronously, in call order,
  so frames can never be reordered on the wire. ``pause_writing`` /
  ``resume_writing`` are honoured: ``send``/``send_many`` await the drain
  after writing when the transport is paused, ``send_now`` refuses.
* Reading: ``data_received`` parses frames as they come and hands each
  binary message to the session's receiver (push) on the loop thread inside
  one ``WriteBatch``, so what the dispatch queues goes out once per read.
  Text messages, and binary ones queued behind them, go through ``receive``.
* Masking rules: a client masks every frame; a server refuses (close 1002)
  an unmasked frame from a client, a client a masked frame from a server.
* Control frames: PING is answered with PONG, PONG ignored, both allowed
  between the fragments of a message; CLOSE is answered and ends the
  connection (the server closes TCP first, RFC 6455 section 7.1.1).
* permessage-deflate is never negotiated: RSV bits set are a protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from tunnel.aio_io import WriteBatch
from tunnel.aio_ws_frames import (
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    INBOX_HIGH,
    INBOX_LOW,
    MAX_HEAD_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    VALID_CLOSE_CODES,
    apply_mask,
    encode_frame,
    frame_pieces,
)
from tunnel.limits import CLOSE_TIMEOUT
from tunnel.message_transport import (
    CLOSE_OK,
    CLOSE_PROTOCOL_ERROR,
    BinaryReceiver,
    TransportClosed,
)

__all__ = ["NativeWebSocket"]

log = logging.getLogger("tunnel")

_BATCH = WriteBatch()


class _End:
    """The end of the message stream: what ``receive`` raises from then on."""

    __slots__ = ("cause", "code", "reason")

    def __init__(self, code: int | None, reason: str, cause: BaseException | None = None) -> None:
        self.code = code
        self.reason = reason
        self.cause = cause

    def error(self) -> TransportClosed:
        exc = TransportClosed(self.code, self.reason)
        exc.__cause__ = self.cause
        return exc


class _Failure(Exception):
    """The peer broke the websocket protocol: fail the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class NativeWebSocket(asyncio.Protocol):
    """One websocket connection, both the ``asyncio.Protocol`` and the
    session's ``MessageTransport`` (see the module docstring).

    Before the upgrade (a proxy CONNECT, the HTTP handshake) the protocol
    only collects bytes for ``read_head``; ``start_websocket`` switches it to
    frames, parsing whatever arrived after the head.

    Args:
        is_client: The dialling side (masks its frames, expects unmasked ones).
        max_message_size: Largest message accepted; a bigger one fails the
            connection with close code 1009.
    """

    def __init__(self, *, is_client: bool, max_message_size: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.is_client = is_client
        self._max_size = max_message_size
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._framing = False
        self._head_waiter: asyncio.Future[bytes] | None = None
        self._subprotocol: str | None = None
        # Receiving.
        self._need = 2  # bytes the parser needs before it can make progress
        self._frag_opcode = 0
        self._fragments: list[bytes] | None = None
        self._frag_size = 0
        self._inbox: deque[bytes | str | _End] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._receiver: BinaryReceiver | None = None
        self._end: _End | None = None
        self._reading_paused = False
        # Writing.
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # Closing.
        self._close_sent = False
        self._close_received = False
        self._lost = False
        self._peer_closed = asyncio.Event()
        self._connection_lost = asyncio.Event()
        self.close_code_received: int | None = None

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        return f"<NativeWebSocket {side} closed={self.closed}>"

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def replace_transport(self, transport: asyncio.Transport) -> None:
        """Use ``transport`` from now on (the TLS one ``loop.start_tls`` returned)."""
        self._transport = transport

    @property
    def transport(self) -> asyncio.Transport | None:
        """The asyncio transport the websocket runs on (None before connecting)."""
        return self._transport

    def data_received(self, data: bytes) -> None:
        if not self._framing:
            self._buf += data
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                end = self._buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = bytes(self._buf[:end + 4])
                    del self._buf[:end + 4]
                    waiter.set_result(head)
                elif len(self._buf) > MAX_HEAD_BYTES:
                    waiter.set_exception(ConnectionAbortedError(f"HTTP head over {MAX_HEAD_BYTES} bytes"))
            if len(self._buf) > MAX_HEAD_BYTES + 65536 and self._transport is not None:
                self._transport.abort()  # nobody takes the head, and more keeps coming
            return
        if self._end is not None:
            return  # nothing after the close frame (or a failure) counts
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return
        with _BATCH:
            self._parse()

    def eof_received(self) -> bool | None:
        return None  # close the transport (TLS cannot half-close anyway)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._connection_lost.set()
        self._peer_closed.set()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("connection closed during the handshake"))
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("websocket connection lost"))
        if self._end is None:
            self._finish(_End(None, "connection lost", exc or ConnectionResetError("connection lost")))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- before the upgrade -----------------------------------------------

    async def read_head(self) -> bytes:
        """The next HTTP head (status line and headers, up to the blank line)."""
        end = self._buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(self._buf[:end + 4])
            del self._buf[:end + 4]
            return head
        if len(self._buf) > MAX_HEAD_BYTES:
            raise ConnectionAbortedError(f"HTTP head over {MAX_HEAD_BYTES} bytes")
        if self._lost:
            raise ConnectionResetError("connection closed during the handshake")
        self._head_waiter = self._loop.create_future()
        try:
            return await self._head_waiter
        finally:
            self._head_waiter = None

    def start_websocket(self, subprotocol: str | None) -> None:
        """Switch to websocket frames (after the 101 response) and parse what
        already arrived behind the head."""
        self._subprotocol = subprotocol
        self._framing = True
        if len(self._buf) >= self._need:
            with _BATCH:
                self._parse()

    def write_raw(self, data: bytes) -> None:
        """Write handshake bytes (before ``start_websocket``)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection closed during the handshake")
        transport.write(data)

    # -- MessageTransport ---------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        return self._subprotocol

    @property
    def closed(self) -> bool:
        return self._close_sent or self._close_received or self._lost

    @property
    def pushing(self) -> bool:
        """True while binary messages go to a receiver (``set_receiver``)."""
        return self._receiver is not None

    def _writable(self) -> asyncio.Transport:
        transport = self._transport
        if self._close_sent or self._lost or transport is None or transport.is_closing():
            raise ConnectionResetError("websocket is closing")
        return transport

    def _write_messages(self, messages: Sequence[bytes]) -> None:
        transport = self._writable()
        mask = self.is_client
        out: list[bytes] = []
        for message in messages:
            frame_pieces(OP_BINARY, message, mask, out)
        # One write for the batch: one TLS write, as few records and send()
        # calls as the stack manages, and the frames stay in order.
        transport.write(b"".join(out))

    async def send(self, data: bytes) -> None:
        self._write_messages((data,))
        if self._paused:
            await self.drain()

    async def send_many(self, messages: Sequence[bytes]) -> None:
        if messages:
            self._write_messages(messages)
        if self._paused:
            await self.drain()

    def send_now(self, messages: Sequence[bytes]) -> bool:
        if self._paused:
            return False
        if messages:
            self._write_messages(messages)
        return True

    async def send_text(self, text: str) -> None:
        """Send a text message (the tunnel never does: for protocol-error tests)."""
        self._writable().write(encode_frame(OP_TEXT, text.encode(), mask=self.is_client))

    async def ping(self, payload: bytes = b"") -> None:
        """Send a websocket PING (the tunnel has its own; for tests and peers)."""
        self._writable().write(encode_frame(OP_PING, payload, mask=self.is_client))

    async def drain(self) -> None:
        while self._paused:
            if self._lost:
                raise ConnectionResetError("websocket connection lost")
            waiter = self._drain_waiter
            if waiter is None or waiter.done():
                waiter = self._drain_waiter = self._loop.create_future()
            await waiter

    def set_receiver(self, on_binary: BinaryReceiver) -> bool:
        self._receiver = on_binary
        return True

    async def receive(self) -> bytes | str:
        while not self._inbox:
            end = self._end
            if end is not None:
                raise end.error()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._inbox.popleft()
        if isinstance(item, _End):
            self._inbox.appendleft(item)  # every later receive() raises it too
            raise item.error()
        if self._reading_paused and len(self._inbox) <= INBOX_LOW:
            self._reading_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        return item

    async def close(self, code: int = CLOSE_OK, reason: bytes = b"") -> None:
        if not self._lost and not self._close_sent:
            self._send_close(code, reason)
        try:
            if not self._lost:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await self._peer_closed.wait()
            self._close_transport()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._connection_lost.wait()
        finally:
            # Timed out, or the caller gave up (cancelled): a dead peer must not
            # keep the socket, nor what is buffered for it.
            if not self._lost and self._transport is not None:
                self._transport.abort()

    # -- internals ----------------------------------------------------------

    def _send_close(self, code: int | None, reason: bytes = b"") -> None:
        self._close_sent = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        payload = b"" if code is None else code.to_bytes(2, "big") + reason[:123]
        transport.write(encode_frame(OP_CLOSE, payload, mask=self.is_client))

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()  # flushes what is buffered (the close frame) first

    def _finish(self, end: _End) -> None:
        """No more messages: ``receive`` raises ``end`` once the inbox is read."""
        self._end = end
        self._receiver = None
        self._inbox.append(end)
        self._wake()

    def _queued(self) -> None:
        """A message went into the inbox: wake ``receive``, and stop reading
        the socket while too many wait (INBOX_HIGH)."""
        if len(self._inbox) >= INBOX_HIGH and not self._reading_paused:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                self._reading_paused = True
                transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: _Failure) -> None:
        """Fail the websocket connection (RFC 6455 section 7.1.7)."""
        log.info("websocket protocol error from the peer: %s (close %d)", failure.reason, failure.code)
        if not self._close_sent:
            self._send_close(failure.code, failure.reason.encode()[:123])
        self._finish(_End(None, f"protocol error: {failure.reason}", failure))
        self._close_transport()

    def _parse(self) -> None:
        buf = self._buf
        size = len(buf)
        pos = 0
        server_side = not self.is_client
        try:
            while self._end is None:
                if size - pos < 2:
                    self._need = 2
                    break
                b0 = buf[pos]
                b1 = buf[pos + 1]
                if b0 & 0x70:
                    raise _Failure(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
                masked = b1 & 0x80
                if bool(masked) != server_side:
                    raise _Failure(CLOSE_PROTOCOL_ERROR, "unmasked frame from a client" if server_side
                                   else "masked frame from a server")
                length = b1 & 0x7F
                start = pos + 2
                if length == 126:
                    if size - pos < 4:
                        self._need = 4
                        break
                    length = int.from_bytes(buf[start:start + 2], "big")
                    start += 2
                elif length == 127:
                    if size - pos < 10:
                        self._need = 10
                        break
                    length = int.from_bytes(buf[start:start + 8], "big")
                    start += 8
                opcode = b0 & 0x0F
                if opcode >= 8:
                    if length > 125 or not b0 & 0x80:
                        raise _Failure(CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame")
                elif length + self._frag_size > self._max_size:
                    raise _Failure(CLOSE_MESSAGE_TOO_BIG, f"message over {self._max_size} bytes")
                end = start + (4 if masked else 0) + length
                if end > size:
                    self._need = end - pos
                    break
                if masked and length > 1024:
                    # Masked straight from the buffer: one copy of the payload, not two.
                    with memoryview(buf) as view, view[start + 4:end] as part:
                        payload = apply_mask(part, buf[start:start + 4])
                elif masked:
                    payload = apply_mask(buf[start + 4:end], buf[start:start + 4])
                else:
                    payload = bytes(buf[start:end])
                pos = end
                self._frame(b0 & 0x80, opcode, payload)
            else:
                pos = size  # ended: nothing after the close frame counts
        except _Failure as failure:
            pos = size
            self._fail(failure)
        del buf[:pos]
        if not buf:
            self._need = 2

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY or opcode == OP_TEXT:
            if self._fragments is not None:
                raise _Failure(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if fin:
                self._message(opcode, payload)
            else:
                self._frag_opcode = opcode
                self._fragments = [payload]
                self._frag_size = len(payload)
        elif opcode == OP_CONT:
            fragments = self._fragments
            if fragments is None:
                raise _Failure(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            fragments.append(payload)
            self._frag_size += len(payload)
            if fin:
                self._fragments = None
                self._frag_size = 0
                self._message(self._frag_opcode, b"".join(fragments))
        elif opcode == OP_PING:
            # Not while paused: a peer that pings without reading would grow our
            # write buffer without bound (RFC 6455 5.5.3 lets a PONG answer
            # only the latest PING; the tunnel has its own keepalive).
            if (not self._close_sent and not self._paused and self._transport is not None
                    and not self._transport.is_closing()):
                self._transport.write(encode_frame(OP_PONG, payload, mask=self.is_client))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self._closing(payload)
        else:
            raise _Failure(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY:
            receiver = self._receiver
            if receiver is not None and not self._inbox:
                if not receiver(payload):
                    self._receiver = None
                return
            self._inbox.append(payload)
        else:
            try:
                self._inbox.append(payload.decode())
            except UnicodeDecodeError:
                raise _Failure(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
        self._queued()

    def _closing(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise _Failure(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
        code: int | None = None
        reason = ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if code not in VALID_CLOSE_CODES and not 3000 <= code <= 4999:
                raise _Failure(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                raise _Failure(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
        self._close_received = True
        self.close_code_received = code
        if not self._close_sent:
            self._send_close(code)  # echo the code, as RFC 6455 section 5.5.1 asks
        self._peer_closed.set()
        self._finish(_End(code, reason))
        if not self.is_client:
            self._close_transport()  # the server closes TCP first
        else:
            # The client waits for the server's TCP close, but not forever.
            self._loop.call_later(CLOSE_TIMEOUT, self._close_transport)
