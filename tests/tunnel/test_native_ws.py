"""The native websocket transport (tunnel/aio_ws_native.py, aio_ws_dial.py)
against real peers on loopback: the ``websockets`` package's server, aiohttp's
server (with tunnel sessions on top), and a raw socket peer that sends crafted
frames (masking rules, fragments with control frames between them, close codes,
protocol errors)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from certs import CertificateAuthority, client_ssl_context, server_ssl_context
from tests.support.servers import splice
from tests.support.waits import until
from tunnel import SUBPROTOCOL
from tunnel.aio import (
    NativeWebSocket,
    ProxyRefused,
    TunnelConfig,
    TunnelSession,
    TunnelStream,
    UpgradeRequest,
    WebSocketHandshakeRefused,
    dial_websocket,
    open_tunnel_websocket,
    serve_websockets,
    server_websocket_response,
)
from tunnel.aio_ws_dial import accept_key, parse_head
from tunnel.aio_ws_frames import (
    INBOX_HIGH,
    MAX_HEAD_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_frame,
)
from tunnel.message_transport import CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR, TransportClosed

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0
NATIVE = TunnelConfig(transport="native")


# -- peers -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def websockets_server(
    handler: Callable[[ServerConnection], Awaitable[None]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """The ``websockets`` package's server on loopback; yields its port."""
    async with serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL], compression=None,  # type: ignore[list-item]
                     ssl=tls, ping_interval=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield int(port)


def _tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = CertificateAuthority.create("native ws test CA")
    return server_ssl_context(ca.issue_server(["localhost"], ["127.0.0.1"])), client_ssl_context(ca.certificate_pem)


class RawServer:
    """A peer speaking websocket frames by hand: answers the upgrade, then
    records what it reads and sends what a test tells it to."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.request_head = b""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.request_head = head
        _, headers = parse_head(head)
        key = headers["Sec-WebSocket-Key"].encode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
                      f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n").encode())
        self.reader, self.writer = reader, writer
        self.connected.set()

    async def read_frame(self) -> tuple[int, int, bytes]:
        """(fin, opcode, unmasked payload) of the next client frame; asserts it is masked."""
        assert self.reader is not None
        b0, b1 = await self.reader.readexactly(2)
        assert b1 & 0x80, "a client frame must be masked"
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        key = await self.reader.readexactly(4)
        data = await self.reader.readexactly(length)
        return b0 & 0x80, b0 & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data))

    def send(self, *frames: bytes) -> None:
        assert self.writer is not None
        self.writer.write(b"".join(frames))


@contextlib.asynccontextmanager
async def raw_server() -> AsyncIterator[tuple[RawServer, str]]:
    peer = RawServer()
    server = await asyncio.start_server(peer._accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield peer, f"ws://127.0.0.1:{port}/raw"
    finally:
        if peer.writer is not None:
            peer.writer.close()
        server.close()
        await server.wait_closed()


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    frame = encode_frame(opcode, payload, mask=False, fin=fin)
    return bytes((frame[0] | rsv,)) + frame[1:]


async def _dial(url: str, **kwargs: object) -> NativeWebSocket:
    async with asyncio.timeout(WAIT):
        return await dial_websocket(url, headers={"Authorization": "Bearer t0ken"}, ssl_context=None,
                                    config=NATIVE, **kwargs)  # type: ignore[arg-type]


# -- interop with the websockets package ----------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_native_client_and_websockets_server_exchange_messages(tls: bool) -> None:
    """Messages of every length class (7-bit, 16-bit, 64-bit) go to the websockets package's server
    and back intact, with the Authorization header and the subprotocol."""
    server_ctx, client_ctx = _tls_pair() if tls else (None, None)
    seen_headers: list[str] = []

    async def echo(conn: ServerConnection) -> None:
        seen_headers.append(conn.request.headers.get("Authorization", "") if conn.request else "")
        async for message in conn:
            await conn.send(message)

    async with websockets_server(echo, server_ctx) as port:
        scheme = "wss" if tls else "ws"
        async with asyncio.timeout(WAIT):
            ws = await dial_websocket(f"{scheme}://127.0.0.1:{port}/x", headers={"Authorization": "Bearer abc"},
                                      ssl_context=client_ctx, config=NATIVE)
        assert ws.subprotocol == SUBPROTOCOL
        messages = [os.urandom(n) for n in (0, 1, 125, 126, 65535, 65536)]
        await ws.send_many(messages)
        async with asyncio.timeout(WAIT):
            got = [await ws.receive() for _ in messages]
        assert got == messages
        assert seen_headers == ["Bearer abc"]
        await ws.close()
        assert ws.closed


async def test_fragmented_message_with_ping_between_fragments_from_websockets_server() -> None:
    """A fragmented message arrives whole; the server's PING gets its PONG; a text message follows
    in order."""
    pong_seen = asyncio.Event()

    async def fragments(conn: ServerConnection) -> None:
        await conn.send([b"part1-", b"part2-", b"part3"])  # one message, three frames
        pong_waiter = await conn.ping(b"are you there")
        await pong_waiter
        pong_seen.set()
        await conn.send("text too")
        await conn.wait_closed()

    async with websockets_server(fragments) as port:
        ws = await _dial(f"ws://127.0.0.1:{port}/")
        async with asyncio.timeout(WAIT):
            assert await ws.receive() == b"part1-part2-part3"
            await pong_seen.wait()
            assert await ws.receive() == "text too"
        await ws.close()


async def test_close_codes_travel_both_ways_with_websockets_server() -> None:
    """The server's close code and reason reach receive(); ours (1001) reaches the server."""
    codes: list[int | None] = []
    recorded = asyncio.Event()

    async def closer(conn: ServerConnection) -> None:
        message = await conn.recv()
        if message == b"close me":
            await conn.close(4000, "bye")
        else:
            with contextlib.suppress(ConnectionClosed):
                await conn.recv()
            codes.append(conn.close_code)
            recorded.set()

    async with websockets_server(closer) as port:
        ws = await _dial(f"ws://127.0.0.1:{port}/")
        await ws.send(b"close me")
        with pytest.raises(TransportClosed) as closed:
            async with asyncio.timeout(WAIT):
                await ws.receive()
        assert (closed.value.code, closed.value.reason) == (4000, "bye")
        assert ws.close_code_received == 4000
        await ws.close()

        ws = await _dial(f"ws://127.0.0.1:{port}/")
        await ws.send(b"other")
        async with asyncio.timeout(WAIT):
            await ws.close(CLOSE_GOING_AWAY, b"agent stopping")
            await recorded.wait()
        assert codes == [CloseCode.GOING_AWAY]
        with pytest.raises(TransportClosed):
            await ws.receive()


async def test_refused_upgrade_reports_status_and_retry_after() -> None:
    """A 503 upgrade answer raises WebSocketHandshakeRefused with its headers, and aiohttp's
    WSServerHandshakeError through open_tunnel_websocket."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    def busy(conn: ServerConnection, request: object) -> Response:
        return Response(503, "Busy", Headers([("Retry-After", "7"), ("Content-Length", "0")]), b"")

    async with serve(lambda conn: asyncio.sleep(0), "127.0.0.1", 0, process_request=busy) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(WebSocketHandshakeRefused) as refused:
            await _dial(f"ws://127.0.0.1:{port}/")
        assert refused.value.status == 503
        assert refused.value.headers["retry-after"] == "7"
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await open_tunnel_websocket(http, f"ws://127.0.0.1:{port}/", headers={}, ssl_context=None,
                                            proxy=None, config=NATIVE)
            assert err.value.status == 503 and err.value.headers is not None
            assert err.value.headers["Retry-After"] == "7"


# -- ordering and backpressure -------------------------------------------------------


async def test_concurrent_writers_frames_arrive_whole_and_in_order_per_writer() -> None:
    """Eight writers mixing send, send_many and send_now on a paused-prone socket: every message
    arrives whole and each writer's in order."""
    received: list[bytes] = []
    done = asyncio.Event()
    writers, per_writer = 8, 200

    async def collect(conn: ServerConnection) -> None:
        async for message in conn:
            assert isinstance(message, bytes)
            received.append(message)
            if len(received) == writers * per_writer:
                done.set()

    async with websockets_server(collect) as port:
        ws = await _dial(f"ws://127.0.0.1:{port}/")
        # A small buffer so that writers hit pause_writing and await the drain.
        assert ws.transport is not None
        ws.transport.set_write_buffer_limits(high=16384)

        async def writer(w: int) -> None:
            for i in range(per_writer):
                body = bytes([w]) * (1000 + (i * 997) % 60000)
                message = struct.pack("!HH", w, i) + body
                if i % 3 == 0:
                    await ws.send_many([message])
                elif i % 3 == 1:
                    await ws.send(message)
                elif not ws.send_now([message]):
                    await ws.send_many([message])

        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(writer(w) for w in range(writers)))
            await done.wait()
        last = [-1] * writers
        for message in received:
            w, i = struct.unpack("!HH", message[:4])
            assert message[4:] == bytes([w]) * (1000 + (i * 997) % 60000)
            assert i == last[w] + 1, "a writer's messages arrived out of order"
            last[w] = i
        await ws.close()


async def test_send_awaits_while_the_peer_does_not_read() -> None:
    """Above the high-water mark send_many awaits the drain and send_now refuses; reading on the
    peer releases it."""
    async with raw_server() as (peer, url):
        ws = await _dial(url)
        await peer.connected.wait()
        assert ws.transport is not None
        ws.transport.set_write_buffer_limits(high=65536)
        blocked = asyncio.create_task(ws.send_many([b"x" * 65536] * 64))  # 4 MiB, kernel buffers included
        await asyncio.sleep(0)  # one loop pass: the task wrote everything and awaits the drain
        assert not ws.send_now([b"y"]), "send_now must refuse while the transport is paused"
        assert not blocked.done()
        # Reading on the peer lets the send finish.
        async with asyncio.timeout(WAIT):
            for _ in range(64):
                fin, opcode, payload = await peer.read_frame()
                assert (fin, opcode, len(payload)) == (0x80, OP_BINARY, 65536)
            await blocked
        ws.transport.abort()


# -- crafted frames: fragments, control frames, masking rules, close codes ------------


async def test_control_frames_interleaved_in_fragments_and_pong_echoes_ping() -> None:
    """PING and PONG between the fragments of a binary and a text message: messages arrive whole,
    the PONG echoes the PING's payload."""
    async with raw_server() as (peer, url):
        ws = await _dial(url)
        await peer.connected.wait()
        peer.send(server_frame(OP_BINARY, b"a" * 3, fin=False), server_frame(OP_PING, b"p1"),
                  server_frame(OP_CONT, b"b" * 200, fin=False), server_frame(OP_PONG, b"unsolicited"),
                  server_frame(OP_CONT, b"c", fin=True), server_frame(OP_TEXT, "é".encode(), fin=False),
                  server_frame(OP_CONT, b"!", fin=True))
        async with asyncio.timeout(WAIT):
            assert await ws.receive() == b"aaa" + b"b" * 200 + b"c"
            assert await ws.receive() == "é!"
            assert await peer.read_frame() == (0x80, OP_PONG, b"p1")
        await ws.send(b"after")
        async with asyncio.timeout(WAIT):
            assert await peer.read_frame() == (0x80, OP_BINARY, b"after")


async def test_pushed_binary_messages_keep_order_behind_a_queued_text_message() -> None:
    """With a receiver set, a binary message behind a queued text message waits for receive(): order
    is kept."""
    async with raw_server() as (peer, url):
        ws = await _dial(url)
        pushed: list[bytes] = []
        assert ws.set_receiver(lambda data: pushed.append(data) is None)
        await peer.connected.wait()
        peer.send(server_frame(OP_BINARY, b"1"), server_frame(OP_TEXT, b"t"), server_frame(OP_BINARY, b"2"))
        async with asyncio.timeout(WAIT):
            assert await ws.receive() == "t"
            assert await ws.receive() == b"2"
        assert pushed == [b"1"]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([encode_frame(OP_BINARY, b"masked", mask=True)], CLOSE_PROTOCOL_ERROR),
        ([server_frame(OP_BINARY, b"x", rsv=0x40)], CLOSE_PROTOCOL_ERROR),
        ([server_frame(OP_PING, b"x", fin=False)], CLOSE_PROTOCOL_ERROR),
        ([server_frame(OP_CONT, b"x")], CLOSE_PROTOCOL_ERROR),
        ([server_frame(OP_BINARY, b"x", fin=False), server_frame(OP_BINARY, b"y")], CLOSE_PROTOCOL_ERROR),
        ([server_frame(0x3, b"")], CLOSE_PROTOCOL_ERROR),
        ([server_frame(OP_CLOSE, b"\x03")], CLOSE_PROTOCOL_ERROR),
        ([server_frame(OP_CLOSE, (1005).to_bytes(2, "big"))], CLOSE_PROTOCOL_ERROR),
        ([server_frame(OP_TEXT, b"\xff\xfe")], 1007),
        ([server_frame(OP_BINARY, b"z" * (NATIVE.max_message_size + 1))], 1009),
    ],
    ids=["masked-from-server", "rsv-bit", "fragmented-ping", "orphan-continuation", "message-in-message",
         "unknown-opcode", "one-byte-close", "reserved-close-code", "invalid-utf8", "too-big"],
)
async def test_protocol_errors_fail_the_connection_with_their_close_code(frames: list[bytes], code: int) -> None:
    """Each protocol violation from the server fails the connection: close frame with its code, then
    TCP close."""
    async with raw_server() as (peer, url):
        ws = await _dial(url)
        await peer.connected.wait()
        peer.send(*frames)
        with pytest.raises(TransportClosed) as closed:
            async with asyncio.timeout(WAIT):
                await ws.receive()
        assert closed.value.code is None and "protocol error" in closed.value.reason
        async with asyncio.timeout(WAIT):
            _, opcode, payload = await peer.read_frame()
            assert (opcode, int.from_bytes(payload[:2], "big")) == (OP_CLOSE, code)
            assert peer.reader is not None
            assert await peer.reader.read() == b""  # then the client closes TCP
        assert ws.closed


async def test_server_side_refuses_unmasked_client_frames() -> None:
    """The accepting side takes masked frames, never masks its own, and fails an unmasked client
    frame with 1002."""
    accepted: list[NativeWebSocket] = []

    def factory() -> NativeWebSocket:
        ws = NativeWebSocket(is_client=False, max_message_size=1 << 20)
        accepted.append(ws)
        return ws

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(WAIT):
            while not accepted or accepted[0].transport is None:
                await asyncio.sleep(0)
        ws = accepted[0]
        ws.start_websocket(SUBPROTOCOL)
        writer.write(encode_frame(OP_BINARY, b"good", mask=True))
        async with asyncio.timeout(WAIT):
            assert await ws.receive() == b"good"
        await ws.send(b"reply")
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(7) == b"\x82\x05reply"  # a server never masks
        writer.write(encode_frame(OP_BINARY, b"bad", mask=False))
        with pytest.raises(TransportClosed):
            async with asyncio.timeout(WAIT):
                await ws.receive()
        async with asyncio.timeout(WAIT):
            close = await reader.read()
        assert close[0] == 0x80 | OP_CLOSE and int.from_bytes(close[2:4], "big") == CLOSE_PROTOCOL_ERROR
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_request_carries_subprotocol_and_headers_and_no_extension_offer() -> None:
    """The upgrade request offers arc-tunnel.v1, carries the caller's headers and offers no
    extension."""
    async with raw_server() as (peer, url):
        await _dial(url)
        _, headers = parse_head(peer.request_head)
        assert headers["Sec-WebSocket-Protocol"] == SUBPROTOCOL
        assert headers["Authorization"] == "Bearer t0ken"
        assert "Sec-WebSocket-Extensions" not in headers


# -- tunnel sessions over the native client and aiohttp's server ---------------------------


async def _echo(stream: TunnelStream) -> None:
    stream.accept()
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_tunnel_session_over_native_client_and_aiohttp_server(tls: bool) -> None:
    """Tunnel sessions, native dialling side and aiohttp's server: concurrent 1 MB echoes are byte-
    exact, then both close."""
    server_ctx, client_ctx = _tls_pair() if tls else (None, None)
    servers: list[TunnelSession] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(NATIVE)
        await ws.prepare(request)
        session = TunnelSession(ws, is_client=False, config=NATIVE, name="server", on_stream=_echo)
        servers.append(session)
        await session.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            scheme = "wss" if tls else "ws"
            ws = await open_tunnel_websocket(http, f"{scheme}://127.0.0.1:{port}/tunnel", headers={},
                                             ssl_context=client_ctx, proxy=None, config=NATIVE)
            assert isinstance(ws, NativeWebSocket)
            client = TunnelSession(ws, is_client=True, config=NATIVE, name="client")
            task = asyncio.create_task(client.run())
            payloads = [os.urandom(1_000_000 + i) for i in range(4)]

            async def one(payload: bytes) -> bytes:
                stream = await client.open_stream(b"echo")
                writer = asyncio.create_task(stream.write(payload))
                got = await stream.readexactly(len(payload))
                await writer
                await stream.write_eof()
                assert await stream.read() == b""
                await stream.aclose()
                return got

            async with asyncio.timeout(WAIT):
                assert await asyncio.gather(*map(one, payloads)) == payloads
                await client.close()
                await task
                await servers[0].wait_closed()
    finally:
        await runner.cleanup()


# -- the accepting side: websockets' and aiohttp's clients, and sessions native on both ends -----


@contextlib.asynccontextmanager
async def native_server(handler: Callable[[NativeWebSocket, UpgradeRequest], Awaitable[None]],
                        tls: ssl.SSLContext | None = None,
                        authorize: Callable[[UpgradeRequest], Awaitable[tuple[int, dict[str, str]] | None]]
                        | None = None) -> AsyncIterator[int]:
    server = await serve_websockets(handler, "127.0.0.1", 0, ssl_context=tls, config=NATIVE, authorize=authorize)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def _native_echo(ws: NativeWebSocket, request: UpgradeRequest) -> None:
    with contextlib.suppress(TransportClosed):
        while True:
            message = await ws.receive()
            if isinstance(message, str):
                await ws.send_text(message)
            else:
                await ws.send(message)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_native_server_and_websockets_client_exchange_messages(tls: bool) -> None:
    """The websockets package's client (offering permessage-deflate) against serve_websockets: no
    extension accepted; binary, fragmented and text messages, PING and close code 4001 work."""
    from websockets.asyncio.client import connect

    server_ctx, client_ctx = _tls_pair() if tls else (None, None)
    async with native_server(_native_echo, server_ctx) as port:
        scheme = "wss" if tls else "ws"
        async with connect(f"{scheme}://127.0.0.1:{port}/x", subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                           compression="deflate", ssl=client_ctx, max_size=None) as conn:
            assert conn.subprotocol == SUBPROTOCOL
            assert conn.response is not None and "Sec-WebSocket-Extensions" not in conn.response.headers
            messages = [os.urandom(n) for n in (0, 125, 126, 65536)]
            for message in messages:
                await conn.send(message)
            await conn.send([b"frag-", b"mented"])  # fragments from a client, masked
            await conn.send("text")
            pong = await conn.ping(b"hi")
            async with asyncio.timeout(WAIT):
                assert [await conn.recv() for _ in messages] == messages
                assert await conn.recv() == b"frag-mented"
                assert await conn.recv() == "text"
                await pong
            await conn.close(4001, "done")
            assert conn.close_code == 4001


async def test_native_server_refusal_and_aiohttp_client() -> None:
    """authorize's refusal reaches aiohttp's client as status and Retry-After; an authorized client
    exchanges a 64 KiB message and closes with 1001."""
    async def authorize(request: UpgradeRequest) -> tuple[int, dict[str, str]] | None:
        if request.headers.get("Authorization") != "Bearer good":
            return 503, {"Retry-After": "3"}
        return None

    async with native_server(_native_echo, authorize=authorize) as port, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"ws://127.0.0.1:{port}/")
        assert refused.value.status == 503 and refused.value.headers is not None
        assert refused.value.headers["Retry-After"] == "3"
        async with http.ws_connect(f"ws://127.0.0.1:{port}/", protocols=[SUBPROTOCOL],
                                   headers={"Authorization": "Bearer good"}) as ws:
            assert ws.protocol == SUBPROTOCOL
            await ws.send_bytes(b"a" * 65536)
            async with asyncio.timeout(WAIT):
                assert await ws.receive_bytes() == b"a" * 65536
            await ws.close(code=CLOSE_GOING_AWAY)
            assert ws.close_code == CLOSE_GOING_AWAY


async def test_tunnel_session_native_on_both_ends_over_tls() -> None:
    """Tunnel sessions native on both ends over TLS: concurrent 2 MB echoes are byte-exact."""
    server_ctx, client_ctx = _tls_pair()
    servers: list[TunnelSession] = []

    async def handle(ws: NativeWebSocket, request: UpgradeRequest) -> None:
        session = TunnelSession(ws, is_client=False, config=NATIVE, name="server", on_stream=_echo)
        servers.append(session)
        await session.run()

    async with native_server(handle, server_ctx) as port:
        ws = await dial_websocket(f"wss://localhost:{port}/t", headers={}, ssl_context=client_ctx, config=NATIVE)
        client = TunnelSession(ws, is_client=True, config=NATIVE, name="client")
        task = asyncio.create_task(client.run())
        payloads = [os.urandom(2_000_000 + i) for i in range(3)]

        async def one(payload: bytes) -> bytes:
            stream = await client.open_stream(b"echo")
            writer = asyncio.create_task(stream.write(payload))
            got = await stream.readexactly(len(payload))
            await writer
            await stream.aclose()
            return got

        async with asyncio.timeout(WAIT):
            assert await asyncio.gather(*map(one, payloads)) == payloads
            await client.close()
            await task
            await servers[0].wait_closed()


# -- bounds (docs/limits.md) ---------------------------------------------------------------


async def test_http_head_over_the_bound_fails_the_dial_and_the_accept() -> None:
    """An HTTP head over MAX_HEAD_BYTES without its end fails the dial, and the accepting side
    closes without answering."""
    async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 10))
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(endless_head, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionAbortedError, match="HTTP head over"):
            await _dial(f"ws://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()

    async with native_server(_native_echo) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES + 10))
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""  # closed, no answer
        writer.close()


async def test_unread_messages_stop_reading_the_socket_until_taken() -> None:
    """INBOX_HIGH unread messages stop reading the socket; taking them resumes it, order kept."""
    async with raw_server() as (peer, url):
        ws = await _dial(url)
        await peer.connected.wait()
        count = INBOX_HIGH * 3
        peer.send(*(server_frame(OP_BINARY, i.to_bytes(4, "big")) for i in range(count)))
        assert ws.transport is not None
        transport = ws.transport
        await until(lambda: not transport.is_reading(), "the socket to stop being read")
        async with asyncio.timeout(WAIT):
            assert [await ws.receive() for _ in range(count)] == [i.to_bytes(4, "big") for i in range(count)]
        assert transport.is_reading()


async def test_close_given_up_on_a_mute_peer_still_releases_the_socket() -> None:
    """A close cancelled while waiting for a mute peer's close frame still aborts the socket (after
    the close frame went out)."""
    async with raw_server() as (peer, url):
        ws = await _dial(url)
        await peer.connected.wait()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):  # as the session bounds its close by the flush timeout
                await ws.close(CLOSE_GOING_AWAY)
        assert ws.closed
        async with asyncio.timeout(WAIT):
            _, opcode, payload = await peer.read_frame()
            assert (opcode, int.from_bytes(payload, "big")) == (OP_CLOSE, CLOSE_GOING_AWAY)
            assert peer.reader is not None
            assert await peer.reader.read() == b""


async def test_pings_are_not_answered_while_the_peer_does_not_read() -> None:
    """PINGs that arrive while our writes are paused go unanswered; once drained, a PING is
    answered."""
    async with raw_server() as (peer, url):
        ws = await _dial(url)
        await peer.connected.wait()
        assert ws.transport is not None
        ws.transport.set_write_buffer_limits(high=65536)
        blocked = asyncio.create_task(ws.send_many([b"x" * 65536] * 64))
        await asyncio.sleep(0)  # one loop pass: written, paused, awaiting the drain
        assert not ws.send_now([])
        peer.send(*(server_frame(OP_PING, i.to_bytes(2, "big")) for i in range(1000)))
        peer.send(server_frame(OP_TEXT, b"marker"))
        async with asyncio.timeout(WAIT):
            assert await ws.receive() == "marker"  # every ping before it was processed
            for _ in range(64):
                assert (await peer.read_frame())[1] == OP_BINARY  # and none was answered
            await blocked
        peer.send(server_frame(OP_PING, b"now"))
        async with asyncio.timeout(WAIT):
            assert await peer.read_frame() == (0x80, OP_PONG, b"now")


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback (over TLS when given a context) that
    records the CONNECT heads it answered and pipes the bytes."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            host, port = head.split(b" ")[1].decode().rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await splice(reader, writer, up_reader, up_writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("proxy_tls", [False, True], ids=["http-proxy", "https-proxy"])
async def test_dial_through_a_connect_proxy_with_credentials(proxy_tls: bool) -> None:
    """wss through an http:// and an https:// CONNECT proxy: Basic Proxy-Authorization from the URL,
    the relay's TLS inside."""
    server_ctx, client_ctx = _tls_pair()  # one CA for the relay and the proxy: the client trusts both
    proxy = ConnectProxy()
    proxy_server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0, ssl=server_ctx if proxy_tls else None)
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    scheme = "https" if proxy_tls else "http"
    try:
        async with native_server(_native_echo, server_ctx) as port:
            ws = await dial_websocket(f"wss://127.0.0.1:{port}/", headers={}, ssl_context=client_ctx,
                                      proxy=f"{scheme}://us%3Aer:p%40ss@127.0.0.1:{proxy_port}", config=NATIVE)
            await ws.send(b"through the proxy")
            async with asyncio.timeout(WAIT):
                assert await ws.receive() == b"through the proxy"
            await ws.close()
        start_line, headers = parse_head(proxy.heads[0])
        assert start_line == f"CONNECT 127.0.0.1:{port} HTTP/1.1"
        assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"us:er:p@ss").decode()
    finally:
        proxy_server.close()
        await proxy_server.wait_closed()


async def test_proxy_refusing_connect_fails_the_dial() -> None:
    """A proxy answering 403 to CONNECT fails the dial with ProxyRefused naming the status."""
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProxyRefused, match="403"):
            await _dial("ws://127.0.0.1:9/", proxy=f"http://127.0.0.1:{proxy_port}")
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Sec-WebSocket-Extensions: permessage-deflate\r\n", "extension that was not offered"),
        (f"Sec-WebSocket-Protocol: {SUBPROTOCOL}.other\r\n", "subprotocol"),
        ("X-Wrong-Accept: 1\r\n", "invalid websocket upgrade answer"),
    ],
    ids=["deflate-imposed", "other-subprotocol", "wrong-accept"],
)
async def test_dial_refuses_an_answer_it_did_not_ask_for(answer: str, reason: str) -> None:
    """A 101 that imposes permessage-deflate, picks another subprotocol, or
    carries a wrong Sec-WebSocket-Accept fails the dial."""

    async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        key = headers["Sec-WebSocket-Key"].encode()
        accept = "d3Jvbmc=" if "Wrong-Accept" in answer else accept_key(key)
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n{answer}\r\n").encode())
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(upgrade, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(WebSocketHandshakeRefused, match=reason):
            await _dial(f"ws://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
