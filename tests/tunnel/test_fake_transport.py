"""Two TunnelSessions over the in-memory transport (tests/tunnel/fake_transport.py):
the session I/O depends only on ``MessageTransport``, so its behaviour (streams,
credit, GOAWAY, close codes) can be checked without sockets, in both receive
modes (pushed to a callback, and through ``receive()``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.support.waits import until
from tests.tunnel.fake_transport import FakeTransport, transport_pair
from tunnel import SUBPROTOCOL
from tunnel.aio import (
    StreamError,
    StreamRefused,
    TunnelClosed,
    TunnelConfig,
    TunnelSession,
    TunnelStream,
)
from tunnel.errors import ErrorCode
from tunnel.limits import INITIAL_STREAM_WINDOW
from tunnel.message_transport import (
    CLOSE_OK,
    CLOSE_PROTOCOL_ERROR,
    MessageTransport,
    TransportClosed,
)

pytestmark = pytest.mark.parametrize("push", [True, False], ids=["push", "pull"])


class Pair:
    def __init__(self, client: TunnelSession, server: TunnelSession,
                 client_ws: FakeTransport, server_ws: FakeTransport) -> None:
        self.client, self.server = client, server
        self.client_ws, self.server_ws = client_ws, server_ws
        self.accepted: list[TunnelStream] = []


async def _echo(stream: TunnelStream) -> None:
    stream.accept()
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


@asynccontextmanager
async def session_pair(push: bool, handler=_echo, subprotocol: str | None = SUBPROTOCOL,
                       ) -> AsyncIterator[Pair]:
    config = TunnelConfig(fast_dispatch=push)
    client_ws, server_ws = transport_pair(subprotocol)
    pair: Pair

    async def on_stream(stream: TunnelStream) -> None:
        pair.accepted.append(stream)
        await handler(stream)

    client = TunnelSession(client_ws, is_client=True, config=config, name="client")
    server = TunnelSession(server_ws, is_client=False, config=config, name="server",
                           on_stream=on_stream)
    pair = Pair(client, server, client_ws, server_ws)
    tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
    try:
        yield pair
    finally:
        await client.close()
        await server.close()
        await asyncio.gather(*tasks)


async def test_fake_is_a_message_transport(push: bool) -> None:
    client_ws, _ = transport_pair(SUBPROTOCOL)
    assert isinstance(client_ws, MessageTransport)


async def test_streams_move_data_both_ways(push: bool) -> None:
    async with session_pair(push) as pair:
        payloads = [bytes([i]) * (200_000 + i) for i in range(4)]

        async def one(payload: bytes) -> bytes:
            stream = await pair.client.open_stream(b"echo")
            writer = asyncio.create_task(stream.write(payload))
            got = await stream.readexactly(len(payload))
            await writer
            await stream.write_eof()
            assert await stream.read() == b""
            await stream.aclose()
            return got

        assert await asyncio.gather(*map(one, payloads)) == payloads
        assert pair.client_ws.messages_sent > len(payloads)
        assert pair.server.transport is pair.server_ws


async def test_stalled_reader_holds_only_its_own_window(push: bool) -> None:
    """A reader that never reads parks its writer on credit; the other
    streams of the session keep moving."""
    stall = asyncio.Event()

    async def handler(stream: TunnelStream) -> None:
        if stream.target == b"stall":
            stream.accept()
            await stall.wait()
            return
        await _echo(stream)

    async with session_pair(push, handler) as pair:
        stalled = await pair.client.open_stream(b"stall")
        parked = asyncio.create_task(stalled.write(b"s" * (4 * INITIAL_STREAM_WINDOW)))
        await until(lambda: pair.server.buffered == INITIAL_STREAM_WINDOW,
                    "the stalled stream's receiver holds its window")
        moving = await pair.client.open_stream(b"echo")
        payload = b"m" * (8 * INITIAL_STREAM_WINDOW)
        writer = asyncio.create_task(moving.write(payload))
        assert await moving.readexactly(len(payload)) == payload
        await writer
        assert not parked.done(), "a write beyond the peer's credit completed"
        assert pair.server.buffered == INITIAL_STREAM_WINDOW
        stalled.reset(ErrorCode.CANCEL, "test over")
        stall.set()
        with pytest.raises(StreamError):
            await parked


async def test_goaway_refuses_new_streams_and_drains(push: bool) -> None:
    async with session_pair(push) as pair:
        stream = await pair.client.open_stream(b"echo")
        waiter = asyncio.create_task(pair.client.wait_goaway_received())
        await pair.client.ping()  # a round trip with no GOAWAY yet
        assert not waiter.done(), "wait_goaway_received returned before any GOAWAY"
        await pair.server.goaway(ErrorCode.NO_ERROR, "restarting")
        await asyncio.wait_for(waiter, 10)
        assert pair.client.goaway_received
        await asyncio.wait_for(pair.client.wait_goaway_received(), 10)  # at once now
        with pytest.raises(StreamRefused):
            await pair.client.open_stream(b"echo")
        await stream.write(b"still works")  # an old stream finishes its work
        assert await stream.readexactly(11) == b"still works"
        await stream.write_eof()
        assert await stream.read() == b""
        await stream.aclose()
        await asyncio.wait_for(pair.client.wait_closed(), 10)
        await asyncio.wait_for(pair.server.wait_closed(), 10)
        assert pair.server.close_reason == "drained after GOAWAY"
        assert pair.server_ws.close_code_sent == CLOSE_OK


async def test_protocol_error_closes_with_protocol_error_code(push: bool) -> None:
    async with session_pair(push) as pair:
        await pair.client_ws.send(b"\xff not a tunnel frame")
        await asyncio.wait_for(pair.server.wait_closed(), 10)
        assert pair.server_ws.close_code_sent == CLOSE_PROTOCOL_ERROR
        assert pair.client_ws.close_code_received == CLOSE_PROTOCOL_ERROR
        assert pair.server.close_reason.startswith("protocol error")
        await asyncio.wait_for(pair.client.wait_closed(), 10)


async def test_text_message_is_a_protocol_error(push: bool) -> None:
    async with session_pair(push) as pair:
        await pair.client_ws.send_text("hello")
        await asyncio.wait_for(pair.server.wait_closed(), 10)
        assert pair.server_ws.close_code_sent == CLOSE_PROTOCOL_ERROR


async def test_wrong_subprotocol_is_refused(push: bool) -> None:
    async with session_pair(push, subprotocol=None) as pair:
        await asyncio.wait_for(pair.server.wait_closed(), 10)
        assert pair.server_ws.close_code_sent == CLOSE_PROTOCOL_ERROR
        assert "subprotocol" in pair.server.close_reason


async def test_lost_connection_fails_open_streams(push: bool) -> None:
    async with session_pair(push) as pair:
        stream = await pair.client.open_stream(b"echo")
        pair.client_ws.lose()
        with pytest.raises(TunnelClosed):
            await stream.read()
        await asyncio.wait_for(pair.client.wait_closed(), 10)
        with pytest.raises(TransportClosed):
            await pair.client_ws.receive()
