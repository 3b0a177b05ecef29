"""``MessageTransport`` over an aiohttp websocket (today's only real one).

Wraps a prepared ``web.WebSocketResponse`` (server side) or a
``ClientWebSocketResponse`` (client side). The batch send and the push
receive come from aio_writer.py (corking) and aio_fastpath.py (dispatch from
aiohttp's parser); both fall back to aiohttp's public calls when its
internals differ from what they know.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import WSMsgType, web

from tunnel.aio_fastpath import FastPath, install_fast_path
from tunnel.aio_writer import BatchSender
from tunnel.message_transport import CLOSE_OK, BinaryReceiver, TransportClosed

__all__ = ["AiohttpTransport"]

_BINARY = WSMsgType.BINARY
_TEXT = WSMsgType.TEXT


class AiohttpTransport:
    """A ``MessageTransport`` on one aiohttp websocket.

    Args:
        ws: A prepared ``web.WebSocketResponse`` or a ``ClientWebSocketResponse``.
    """

    __slots__ = ("_fast", "_sender", "websocket")

    def __init__(self, ws: Any) -> None:
        self.websocket = ws
        self._sender = BatchSender(ws)
        self._fast: FastPath | None = None

    def __repr__(self) -> str:
        return f"<AiohttpTransport {self.websocket!r}>"

    @property
    def subprotocol(self) -> str | None:
        # web.WebSocketResponse calls it ws_protocol, ClientWebSocketResponse protocol.
        ws = self.websocket
        if isinstance(ws, web.WebSocketResponse):
            return ws.ws_protocol
        protocol: str | None = getattr(ws, "protocol", None)
        return protocol

    @property
    def pushing(self) -> bool:
        """True once ``set_receiver`` installed the fast path (aio_fastpath.py)."""
        return self._fast is not None

    @property
    def closed(self) -> bool:
        return bool(self.websocket.closed)

    async def send(self, data: bytes) -> None:
        await self.websocket.send_bytes(data)

    async def send_many(self, messages: Sequence[bytes]) -> None:
        await self._sender.send(messages)

    def send_now(self, messages: Sequence[bytes]) -> bool:
        return self._sender.send_now(messages)

    async def drain(self) -> None:
        # send_bytes awaits aiohttp's drain whenever the transport is paused,
        # so nothing written through this transport is ever left above the
        # high-water mark: nothing to wait for here.
        return None

    async def receive(self) -> bytes | str:
        msg = await self.websocket.receive()
        if msg.type is _BINARY:
            data: bytes = msg.data
            return data
        if msg.type is _TEXT:
            text: str = msg.data
            return text
        if msg.type is WSMsgType.ERROR:
            closed = TransportClosed(None, type(msg.data).__name__)
            if isinstance(msg.data, BaseException):
                raise closed from msg.data
            raise closed
        # CLOSE, CLOSING, CLOSED (aiohttp answers PING and PONG itself).
        code = msg.data if isinstance(msg.data, int) else None
        raise TransportClosed(code, msg.extra if isinstance(msg.extra, str) else "")

    def set_receiver(self, on_binary: BinaryReceiver) -> bool:
        self._fast = install_fast_path(self.websocket, on_binary)
        return self._fast is not None

    async def close(self, code: int = CLOSE_OK, reason: bytes = b"") -> None:
        await self.websocket.close(code=code, message=reason)
