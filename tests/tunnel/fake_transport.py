"""An in-memory ``MessageTransport`` pair: two tunnel sessions, no sockets.

``transport_pair()`` returns two connected ``FakeTransport`` objects. What one
sends arrives at the other on a later loop iteration (as a socket read would),
in order; binary messages go to the receiver callback when one is set
(``set_receiver``), everything else through ``receive()``. A close frame
travels the same way and is answered, as RFC 6455 wants; ``lose()`` drops
the connection without one. There is no buffer limit: the tunnel's credit is
what bounds what is in flight, which is what the adapter tests check.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from tunnel.message_transport import CLOSE_OK, BinaryReceiver, MessageTransport, TransportClosed

__all__ = ["FakeTransport", "transport_pair"]


class _Close:
    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class FakeTransport:
    """One end of an in-memory websocket (see the module docstring).

    Attributes:
        close_code_received: The code of the peer's close frame, once one arrived.
        close_code_sent: The code this end closed with, once it did.
        messages_sent: Binary and text messages sent so far.
    """

    def __init__(self, subprotocol: str | None) -> None:
        self._subprotocol = subprotocol
        self._loop = asyncio.get_running_loop()
        self.peer: FakeTransport | None = None
        self._inbox: deque[bytes | str | _Close | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._receiver: BinaryReceiver | None = None
        self._close_sent = False
        self._close_received = False
        self._lost = False
        self._peer_closed = asyncio.Event()
        self.close_code_sent: int | None = None
        self.close_code_received: int | None = None
        self.messages_sent = 0

    @property
    def subprotocol(self) -> str | None:
        return self._subprotocol

    @property
    def closed(self) -> bool:
        return self._close_sent or self._close_received or self._lost

    def _check_open(self) -> None:
        if self._close_sent or self._lost:
            raise ConnectionResetError("fake websocket is closing")

    def _post(self, item: bytes | str | _Close | None) -> None:
        peer = self.peer
        assert peer is not None
        self._loop.call_soon(peer._arrive, item)

    async def send(self, data: bytes) -> None:
        self.send_now([data])

    async def send_text(self, text: str) -> None:
        """Send a text message (the tunnel never does: for protocol-error tests)."""
        self._check_open()
        self.messages_sent += 1
        self._post(text)

    async def send_many(self, messages: Sequence[bytes]) -> None:
        self.send_now(messages)

    def send_now(self, messages: Sequence[bytes]) -> bool:
        self._check_open()
        for message in messages:
            self.messages_sent += 1
            self._post(bytes(message))
        return True

    async def drain(self) -> None:
        self._check_open()

    def set_receiver(self, on_binary: BinaryReceiver) -> bool:
        self._receiver = on_binary
        return True

    def _arrive(self, item: bytes | str | _Close | None) -> None:
        if self._lost or self._close_received:
            return
        receiver = self._receiver
        if type(item) is bytes and receiver is not None and not self._inbox:
            if not receiver(item):
                self._receiver = None
            return
        self._inbox.append(item)
        if isinstance(item, _Close):
            self._close_received = True
            self.close_code_received = item.code
            self._peer_closed.set()  # what close() waits for
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> bytes | str:
        while not self._inbox:
            if self._lost:
                raise TransportClosed(None, "connection lost") from ConnectionResetError()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._inbox.popleft()
        if isinstance(item, _Close):
            if not self._close_sent:  # answer it, as aiohttp's autoclose does
                self._close_sent = True
                self.close_code_sent = item.code
                self._post(_Close(item.code, ""))
            raise TransportClosed(item.code, item.reason)
        if item is None:
            raise TransportClosed(None, "connection lost") from ConnectionResetError()
        return item

    async def close(self, code: int = CLOSE_OK, reason: bytes = b"") -> None:
        if not self._close_sent and not self._lost:
            self._close_sent = True
            self.close_code_sent = code
            self._post(_Close(code, reason.decode(errors="replace")))
        if not self._lost:
            await self._peer_closed.wait()

    def lose(self) -> None:
        """Drop the connection both ways without a close frame."""
        for end in (self, self.peer):
            assert end is not None
            end._lost = True
            end._peer_closed.set()
            waiter = end._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


def transport_pair(subprotocol: str | None) -> tuple[FakeTransport, FakeTransport]:
    """Two connected ends, (client, server), both reporting ``subprotocol``."""
    client, server = FakeTransport(subprotocol), FakeTransport(subprotocol)
    client.peer, server.peer = server, client
    assert isinstance(client, MessageTransport)
    return client, server
