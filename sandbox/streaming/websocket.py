"""A server websocket on the upgraded connection, framed by the sans-I/O
``websockets.protocol.Protocol`` (already OPEN: we did the handshake).

Fragmented messages are reassembled here; pings are answered by the protocol
layer; a close frame or EOF ends ``recv``.
"""

from __future__ import annotations

import asyncio
import contextlib

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from sandbox.streaming.transport import READ_SIZE

# One message may carry a whole stdin paste or a SPDY burst; cap it anyway.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class WsConnection:
    """Messages in and out of one websocket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._proto = Protocol(Side.SERVER, state=State.OPEN, max_size=MAX_MESSAGE_BYTES)
        self._pending: list[tuple[bool, bytes]] = []
        self._frag: list[bytes] = []
        self._frag_text = False
        self._lock = asyncio.Lock()
        self.closed = False

    async def _flush(self) -> None:
        data = b"".join(self._proto.data_to_send())
        if data and not self._writer.is_closing():
            async with self._lock:
                self._writer.write(data)
                await self._writer.drain()

    async def recv(self) -> tuple[bool, bytes] | None:
        """Next message as (is_text, payload); None when the websocket closed."""
        while not self._pending:
            if self.closed:
                return None
            try:
                data = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            if data:
                self._proto.receive_data(data)
            else:
                self._proto.receive_eof()
            for frame in self._proto.events_received():
                if not isinstance(frame, Frame):
                    continue
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self._frag_text = frame.opcode == Opcode.TEXT
                    self._frag = [bytes(frame.data)]
                elif frame.opcode == Opcode.CONT:
                    self._frag.append(bytes(frame.data))
                elif frame.opcode == Opcode.CLOSE:
                    self.closed = True
                    continue
                else:
                    continue  # PING answered by the protocol, PONG ignored
                if frame.fin:
                    self._pending.append((self._frag_text, b"".join(self._frag)))
                    self._frag = []
            with contextlib.suppress(ConnectionError, OSError):
                await self._flush()
            if not data or self._proto.state is State.CLOSED:
                self.closed = True
        return self._pending.pop(0)

    async def send(self, data: bytes, text: bool = False) -> None:
        """One message (dropped once the websocket is closing)."""
        if self._proto.state is not State.OPEN:
            return
        if text:
            self._proto.send_text(data)
        else:
            self._proto.send_binary(data)
        await self._flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame and flush."""
        with contextlib.suppress(ConnectionError, OSError):
            if self._proto.state is State.OPEN:
                self._proto.send_close(code, reason)
            await self._flush()


class WsTransport:
    """SPDY bytes carried in binary websocket messages (any boundaries)."""

    def __init__(self, ws: WsConnection) -> None:
        self._ws = ws

    async def read(self) -> bytes:
        while True:
            msg = await self._ws.recv()
            if msg is None:
                return b""
            if msg[1]:
                return msg[1]

    async def write(self, data: bytes) -> None:
        if data:
            await self._ws.send(data)

    async def close(self) -> None:
        await self._ws.close()
