"""An asyncio SPDY/3.1 session for the server side of kubectl's streams.

Reads bytes from a ``ByteTransport``, feeds ``SpdyConnection``, answers
SYN_STREAM with an empty SYN_REPLY (what spdystream's server does when the
handler accepts), routes DATA into per-stream ``ByteQueue``s, echoes PINGs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sandbox.streaming.bytequeue import ByteQueue
from sandbox.streaming.spdy.frames import (
    CANCEL,
    Data,
    GoAway,
    Ping,
    RstStream,
    SpdyConnection,
    SpdyProtocolError,
    SynStream,
)
from sandbox.streaming.transport import ByteTransport

log = logging.getLogger("sandbox.streaming")

# Pause reading the connection while one stream holds this much unread data;
# resumes once its consumer caught up (bounded memory per session).
STREAM_HIGH_WATER = 4 * 1024 * 1024


def _describe(frame: object) -> str:
    if isinstance(frame, Data):
        return f"DATA stream={frame.stream_id} len={len(frame.data)} fin={frame.fin}"
    return repr(frame)


class SpdyStream:
    """One stream opened by the client."""

    def __init__(self, session: SpdySession, stream_id: int, headers: list[tuple[str, str]]):
        self.session = session
        self.id = stream_id
        self.headers = {k: v for k, v in reversed(headers)}  # first value wins
        self.queue = ByteQueue()
        self.sent_fin = False
        self.reset = False

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    async def read(self, n: int = 65536) -> bytes:
        """Bytes from the client; b"" at FIN or reset."""
        return await self.queue.read(n)

    async def write(self, data: bytes) -> None:
        """DATA frames to the client (dropped after a reset or our FIN)."""
        if self.reset or self.sent_fin or not data:
            return
        self.session.conn.send_data(self.id, data)
        await self.session.flush()

    async def write_eof(self) -> None:
        """Half-close: empty DATA with FIN, once."""
        if self.reset or self.sent_fin:
            return
        self.sent_fin = True
        self.session.conn.send_data(self.id, b"", fin=True)
        await self.session.flush()

    async def abort(self, status: int = CANCEL) -> None:
        """RST_STREAM."""
        if not self.reset:
            self.reset = True
            self.queue.feed_eof()
            self.session.conn.send_rst_stream(self.id, status)
            await self.session.flush()


class SpdySession:
    """Serve one SPDY connection until the peer closes it or ``close()``.

    Args:
        transport: the byte pipe.
        on_stream: called (synchronously) with each new client stream.
    """

    def __init__(self, transport: ByteTransport, on_stream: Callable[[SpdyStream], None]):
        self.transport = transport
        self.conn = SpdyConnection()
        self.streams: dict[int, SpdyStream] = {}
        self._on_stream = on_stream
        self._write_lock = asyncio.Lock()
        self._last_id = 0
        self.closed = asyncio.Event()

    async def flush(self) -> None:
        """Write out queued frames (serialised: frames must not interleave)."""
        async with self._write_lock:
            data = self.conn.data_to_send()
            if data:
                await self.transport.write(data)

    async def run(self) -> None:
        """Read and dispatch frames until EOF, GOAWAY or a protocol error."""
        try:
            while True:
                data = await self.transport.read()
                if not data:
                    return
                for frame in self.conn.receive_data(data):
                    if await self._dispatch(frame):
                        return
                await self.flush()
        except SpdyProtocolError as exc:
            log.info("spdy protocol error: %s", exc)
        finally:
            for stream in self.streams.values():
                stream.queue.feed_eof()
            self.closed.set()

    async def _dispatch(self, frame: object) -> bool:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("spdy frame received: %s", _describe(frame))
        if isinstance(frame, Data):
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                return False
            stream.queue.feed(frame.data)
            if frame.fin:
                stream.queue.feed_eof()
            if stream.queue.size > STREAM_HIGH_WATER:
                await self.flush()
                await stream.queue.wait_drained()
        elif isinstance(frame, SynStream):
            stream = SpdyStream(self, frame.stream_id, frame.headers)
            self.streams[frame.stream_id] = stream
            self._last_id = max(self._last_id, frame.stream_id)
            self.conn.send_syn_reply(frame.stream_id, [])
            if frame.fin:
                stream.queue.feed_eof()
            await self.flush()
            self._on_stream(stream)
        elif isinstance(frame, RstStream):
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream.reset = True
                stream.queue.feed_eof()
        elif isinstance(frame, Ping):
            self.conn.send_ping(frame.ping_id)
        elif isinstance(frame, GoAway):
            return True
        # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: nothing to do (no flow control).
        return False

    async def close(self) -> None:
        """GOAWAY, flush; the caller closes the connection."""
        with contextlib.suppress(ConnectionError, OSError):
            self.conn.send_goaway(self._last_id)
            await self.flush()
            await self.transport.close()
