"""Tests of the asyncio adapter over a real aiohttp websocket on 127.0.0.1.

Every test runs a real aiohttp server and client on loopback; nothing is
mocked. Waits are bounded (``asyncio.timeout``) and assertions are about
progress and byte counts, never about elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from certs import CertificateAuthority, client_ssl_context, server_ssl_context
from tests.support.waits import until
from tunnel import (
    ErrorCode,
    Frame,
    FrameType,
    StreamRefused,
    StreamReset,
    TunnelClosed,
    TunnelConfig,
    TunnelSession,
    TunnelStream,
    open_tunnel_websocket,
    server_websocket_response,
    splice,
    splice_streams,
    ws_connect_kwargs,
)
from tunnel.limits import INITIAL_STREAM_WINDOW

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("client_transport")]

Handler = Callable[[TunnelStream], Awaitable[None]]
WAIT = 20.0  # bound for every wait in these tests (never reached when all is well)


@dataclasses.dataclass
class Pair:
    """A connected client/server session pair."""

    client: TunnelSession
    server: TunnelSession
    client_task: asyncio.Task[None]


async def _serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


@contextlib.asynccontextmanager
async def tunnel_pair(
    server_handler: Handler | None = None,
    client_handler: Handler | None = None,
    config: TunnelConfig | None = None,
    tls: bool = False,
) -> AsyncIterator[Pair]:
    """Yield a client and a server TunnelSession joined by a loopback websocket
    (wss with a certificate from certs/ when ``tls``)."""
    config = config or TunnelConfig()
    server_ctx: ssl.SSLContext | None = None
    client_ctx: ssl.SSLContext | bool = True
    if tls:
        ca = CertificateAuthority.create("tunnel test CA")
        server_ctx = server_ssl_context(ca.issue_server(["localhost"], ["127.0.0.1"]))
        client_ctx = client_ssl_context(ca.certificate_pem)
    sessions: asyncio.Queue[TunnelSession] = asyncio.Queue()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(config)
        await ws.prepare(request)
        session = TunnelSession(
            ws, is_client=False, config=config, name="server", on_stream=server_handler
        )
        sessions.put_nowait(session)
        await session.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner, port = await _serve(app, server_ctx)
    try:
        async with aiohttp.ClientSession() as http:
            scheme = "wss" if tls else "ws"
            # On the transport TunnelConfig names ($ARC_TUNNEL_TRANSPORT=native: the native one).
            ws = await open_tunnel_websocket(
                http, f"{scheme}://127.0.0.1:{port}/tunnel", headers={},
                ssl_context=client_ctx if isinstance(client_ctx, ssl.SSLContext) else None,
                proxy=None, config=config,
            )
            client = TunnelSession(
                ws, is_client=True, config=config, name="client", on_stream=client_handler
            )
            task = asyncio.create_task(client.run())
            async with asyncio.timeout(WAIT):
                server = await sessions.get()
            try:
                yield Pair(client, server, task)
            finally:
                await client.close()
                async with asyncio.timeout(WAIT):
                    await task
    finally:
        await runner.cleanup()


async def echo(stream: TunnelStream) -> None:
    """Server handler: echo every byte, FIN after the peer's FIN."""
    stream.accept()
    while data := await stream.read():
        await stream.write(data)
    await stream.write_eof()


async def read_all(stream: TunnelStream) -> bytes:
    """Read until FIN."""
    parts = []
    while data := await stream.read(1 << 20):
        parts.append(data)
    return b"".join(parts)


async def test_session_transfers_bytes_exactly_on_concurrent_streams() -> None:
    """Several MB on 4 concurrent streams come back byte-exact (sha256), both ways."""

    async def one(pair: Pair, size: int) -> None:
        payload = os.urandom(size)
        stream = await pair.client.open_stream(b"echo")

        async def send() -> None:
            view = memoryview(payload)
            for start in range(0, size, 100_003):  # odd sizes: frames split anywhere
                await stream.write(view[start : start + 100_003])
            await stream.write_eof()

        sender = asyncio.create_task(send())
        got = await read_all(stream)
        await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert len(got) == size

    async with tunnel_pair(echo) as pair:
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(one(pair, 2_000_000 + i) for i in range(4)))
        assert pair.client.streams == 0


async def test_session_transfers_bytes_exactly_over_tls() -> None:
    """The same session over wss (real TLS from certs/): 3 MB echo byte-exact."""
    async with tunnel_pair(echo, tls=True) as pair:
        payload = os.urandom(3_000_000)
        stream = await pair.client.open_stream(b"echo")

        async def send() -> None:
            await stream.write(payload)
            await stream.write_eof()

        sender = asyncio.create_task(send())
        async with asyncio.timeout(WAIT):
            got = await read_all(stream)
            await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_stalled_reader_does_not_stall_other_streams() -> None:
    """A stream whose reader stopped blocks its own writer only; another stream
    moves 8 MB meanwhile, then the stalled one completes once read."""
    release = asyncio.Event()
    stalled_got: list[bytes] = []

    async def handler(stream: TunnelStream) -> None:
        if stream.target == b"stall":
            stream.accept()
            await release.wait()
            stalled_got.append(await read_all(stream))
            return
        await echo(stream)

    async with tunnel_pair(handler) as pair:
        stalled = await pair.client.open_stream(b"stall")
        blob = os.urandom(6 * INITIAL_STREAM_WINDOW)

        async def fill() -> None:
            await stalled.write(blob)
            await stalled.write_eof()

        filler = asyncio.create_task(fill())
        await until(lambda: stalled._write_waiter is not None, "writer parked on credit")

        other = await pair.client.open_stream(b"echo")
        data = os.urandom(8_000_000)

        async def send() -> None:
            await other.write(data)
            await other.write_eof()

        sender = asyncio.create_task(send())
        async with asyncio.timeout(WAIT):
            assert await read_all(other) == data
            await sender
        assert not filler.done(), "the stalled stream's writer must still be blocked"

        release.set()
        async with asyncio.timeout(WAIT):
            await filler
            await until(lambda: bool(stalled_got), "stalled stream drained")
        assert stalled_got[0] == blob


async def test_write_blocks_when_peer_does_not_read_and_buffer_stays_bounded() -> None:
    """A writer to a non-reading peer parks on credit; the receiver holds exactly
    the window it granted, never more: the initial one, since a reader that
    never reads never earns a larger window."""
    server_streams: list[TunnelStream] = []
    release = asyncio.Event()

    async def handler(stream: TunnelStream) -> None:
        stream.accept()
        server_streams.append(stream)
        await release.wait()

    async with tunnel_pair(handler) as pair:
        window = INITIAL_STREAM_WINDOW
        assert pair.server.config.limits.stream_window > window  # it could grow, but does not
        stream = await pair.client.open_stream(b"sink")
        writer = asyncio.create_task(stream.write(b"x" * (4 * window)))
        await until(lambda: stream._write_waiter is not None, "writer parked on credit")
        await until(
            lambda: bool(server_streams) and server_streams[0].buffered == window,
            "receiver got the whole window",
        )
        assert not writer.done()
        assert pair.client._core.send_window(stream.id) == 0
        writer.cancel()
        release.set()


async def test_reset_by_peer_raises_stream_reset_on_read_and_write() -> None:
    """The peer's RESET surfaces as StreamReset(code, reason) in read and write."""

    async def handler(stream: TunnelStream) -> None:
        stream.accept()
        await stream.read()
        stream.reset(ErrorCode.FORBIDDEN, "not allowed")

    async with tunnel_pair(handler) as pair:
        stream = await pair.client.open_stream(b"x")
        await stream.write(b"hello")
        async with asyncio.timeout(WAIT):
            with pytest.raises(StreamReset) as read_err:
                await stream.read()
        assert read_err.value.code == ErrorCode.FORBIDDEN
        assert read_err.value.reason == "not allowed"
        with pytest.raises(StreamReset) as write_err:
            await stream.write(b"more")
        assert write_err.value.code == ErrorCode.FORBIDDEN


async def test_open_refused_raises_stream_refused_with_code() -> None:
    """reject() in the peer's handler makes open_stream raise StreamRefused with
    the code and reason; a handler without accept refuses too."""

    async def handler(stream: TunnelStream) -> None:
        if stream.target == b"bad":
            stream.reject(ErrorCode.CONNECT_FAILED, "upstream unreachable")

    async with tunnel_pair(handler) as pair:
        with pytest.raises(StreamRefused) as err:
            await pair.client.open_stream(b"bad")
        assert err.value.code == ErrorCode.CONNECT_FAILED
        assert err.value.reason == "upstream unreachable"
        with pytest.raises(StreamRefused) as err2:
            await pair.client.open_stream(b"silent")
        assert err2.value.code == ErrorCode.REFUSED_STREAM


async def test_open_times_out_with_open_timeout() -> None:
    """An OPEN the peer never answers fails with StreamRefused(OPEN_TIMEOUT)."""
    release = asyncio.Event()

    async def handler(stream: TunnelStream) -> None:
        await release.wait()  # neither accept nor reject

    async with tunnel_pair(handler, config=TunnelConfig(open_timeout=0.2)) as pair:
        with pytest.raises(StreamRefused) as err:
            await pair.client.open_stream(b"slow")
        assert err.value.code == ErrorCode.OPEN_TIMEOUT
        release.set()


async def test_goaway_lets_existing_streams_finish_and_refuses_new_ones() -> None:
    """After GOAWAY an open stream still completes, new OPENs are refused, and
    both sessions end by themselves once drained."""
    async with tunnel_pair(echo) as pair:
        stream = await pair.client.open_stream(b"echo")
        await stream.write(b"before")
        await pair.server.goaway()
        await until(lambda: pair.client._goaway_received, "client saw GOAWAY")
        with pytest.raises(StreamRefused):
            await pair.client.open_stream(b"echo")
        await stream.write(b" and after")
        await stream.write_eof()
        async with asyncio.timeout(WAIT):
            assert await read_all(stream) == b"before and after"
            await pair.client.wait_closed()
            await pair.server.wait_closed()
        assert pair.client.close_reason in ("drained after GOAWAY", "websocket closed")


async def test_dead_peer_is_detected_within_ping_timeout() -> None:
    """A peer that stops reading never answers PING: the session ends with
    'ping timeout' and stream waiters get TunnelClosed."""
    release = asyncio.Event()

    async def mute(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response()
        await ws.prepare(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                await release.wait()  # the peer does not read: it is "dead"
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", mute)
    runner, port = await _serve(app)
    config = TunnelConfig(ping_interval=0.1, ping_timeout=0.3)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"http://127.0.0.1:{port}/tunnel", **ws_connect_kwargs(config)
            )
            session = TunnelSession(ws, is_client=True, config=config, name="client")
            task = asyncio.create_task(session.run())
            opener = asyncio.create_task(session.open_stream(b"x", timeout=0))
            async with asyncio.timeout(WAIT):
                await task
            assert session.closed
            assert session.close_reason == "ping timeout"
            with pytest.raises(TunnelClosed):
                await opener
    finally:
        release.set()
        await runner.cleanup()


async def _raw_peer(
    behaviour: Callable[[web.WebSocketResponse], Awaitable[None]],
    client_kwargs: dict[str, object] | None = None,
) -> TunnelSession:
    """Run a TunnelSession client against a raw websocket ``behaviour``."""
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response()
        await ws.prepare(request)
        await behaviour(ws)
        return ws

    app.router.add_get("/tunnel", handle)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"http://127.0.0.1:{port}/tunnel", **(client_kwargs or ws_connect_kwargs())
            )
            session = TunnelSession(ws, is_client=True, name="client")
            async with asyncio.timeout(WAIT):
                await session.run()
            return session
    finally:
        await runner.cleanup()


async def test_text_message_closes_session_with_protocol_error() -> None:
    """A text message is a protocol error: GOAWAY(PROTOCOL_ERROR) then close 1002."""
    seen: list[object] = []

    async def send_text(ws: web.WebSocketResponse) -> None:
        await ws.send_str("hello")
        async with asyncio.timeout(WAIT):
            async for msg in ws:
                if msg.type is WSMsgType.BINARY:
                    seen.append(Frame.parse(msg.data))
        seen.append(ws.close_code)

    session = await _raw_peer(send_text)
    assert session.close_reason == "protocol error: PROTOCOL_ERROR"
    goaways = [f for f in seen if isinstance(f, Frame) and f.type is FrameType.GOAWAY]
    assert goaways and goaways[0].error_code == ErrorCode.PROTOCOL_ERROR
    assert seen[-1] == WSCloseCode.PROTOCOL_ERROR


async def test_session_refuses_websocket_without_subprotocol() -> None:
    """A websocket that did not negotiate arc-tunnel.v1 is closed with 1002."""
    codes: list[object] = []

    async def wait_close(ws: web.WebSocketResponse) -> None:
        async with asyncio.timeout(WAIT):
            async for _ in ws:
                pass
        codes.append(ws.close_code)

    kwargs = dict(ws_connect_kwargs())
    kwargs["protocols"] = ()
    session = await _raw_peer(wait_close, kwargs)
    assert "subprotocol" in session.close_reason
    assert codes == [WSCloseCode.PROTOCOL_ERROR]


async def test_ping_measures_rtt() -> None:
    """ping() returns a positive round-trip time and records it in session.rtt."""
    async with tunnel_pair() as pair:
        rtt = await pair.client.ping()
        assert rtt > 0
        assert pair.client.rtt == rtt


async def test_idle_stream_is_reset_with_idle_timeout() -> None:
    """A stream silent both ways for idle_timeout is reset with IDLE_TIMEOUT."""
    release = asyncio.Event()

    async def handler(stream: TunnelStream) -> None:
        stream.accept()
        await release.wait()

    async with tunnel_pair(handler, config=TunnelConfig(idle_timeout=0.2)) as pair:
        stream = await pair.client.open_stream(b"quiet")
        async with asyncio.timeout(WAIT):
            with pytest.raises(StreamReset) as err:
                await stream.read()
        assert err.value.code == ErrorCode.IDLE_TIMEOUT
        release.set()


async def _tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_splice_propagates_half_close_with_tcp_server() -> None:
    """splice(): our FIN reaches a real TCP server as EOF; its answer and its
    close come back as data then FIN."""

    async def reverse_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until EOF: proves FIN -> write_eof
        writer.write(hashlib.sha256(data).digest() + data[::-1])
        await writer.drain()
        writer.close()

    tcp, port = await _tcp_server(reverse_after_eof)

    async def handler(stream: TunnelStream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream.accept()
        await splice(stream, reader, writer)

    try:
        async with tunnel_pair(handler) as pair:
            stream = await pair.client.open_stream(b"tcp")
            payload = os.urandom(3_000_000)
            await stream.write(payload)
            await stream.write_eof()
            async with asyncio.timeout(WAIT):
                got = await read_all(stream)
            assert got == hashlib.sha256(payload).digest() + payload[::-1]
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_splice_closes_socket_when_stream_is_reset() -> None:
    """A RESET from the tunnel side closes the TCP connection (the server sees EOF
    or a reset, never a hang)."""
    closed = asyncio.Event()

    async def wait_for_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        closed.set()
        writer.close()

    tcp, port = await _tcp_server(wait_for_close)

    async def handler(stream: TunnelStream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream.accept()
        await splice(stream, reader, writer)

    try:
        async with tunnel_pair(handler) as pair:
            stream = await pair.client.open_stream(b"tcp")
            await stream.write(b"some bytes")
            stream.reset(ErrorCode.CANCEL, "client gave up")
            async with asyncio.timeout(WAIT):
                await closed.wait()
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_splice_streams_relays_between_two_streams() -> None:
    """splice_streams() joins an incoming stream to one opened back to the client
    (a relay in miniature): bytes exact, FIN travels end to end."""
    pair_box: list[Pair] = []

    async def relay(stream: TunnelStream) -> None:
        stream.accept()
        onward = await pair_box[0].server.open_stream(b"echo")
        await splice_streams(stream, onward)

    async with tunnel_pair(relay, client_handler=echo) as pair:
        pair_box.append(pair)
        stream = await pair.client.open_stream(b"relay")
        payload = os.urandom(2_500_000)

        async def send() -> None:
            await stream.write(payload)
            await stream.write_eof()

        sender = asyncio.create_task(send())
        async with asyncio.timeout(WAIT):
            assert await read_all(stream) == payload
            await sender


async def test_session_close_raises_tunnel_closed_in_stream_waiters() -> None:
    """When the peer closes the session, a blocked read raises TunnelClosed."""
    release = asyncio.Event()

    async def handler(stream: TunnelStream) -> None:
        stream.accept()
        await release.wait()

    async with tunnel_pair(handler) as pair:
        stream = await pair.client.open_stream(b"x")
        reader = asyncio.create_task(stream.read())
        await asyncio.sleep(0)
        await pair.server.close()
        async with asyncio.timeout(WAIT):
            with pytest.raises(TunnelClosed):
                await reader
        release.set()


async def test_stream_write_before_accept_raises() -> None:
    """Writing on an incoming stream before accept() is a caller bug: RuntimeError."""
    errors: list[BaseException] = []

    async def handler(stream: TunnelStream) -> None:
        try:
            await stream.write(b"too early")
        except RuntimeError as exc:
            errors.append(exc)
        stream.reject(ErrorCode.INTERNAL_ERROR, "bug")

    async with tunnel_pair(handler) as pair:
        with pytest.raises(StreamRefused):
            await pair.client.open_stream(b"x")
    assert len(errors) == 1


async def test_splice_resets_stream_when_socket_is_reset() -> None:
    """A TCP peer that resets its connection makes splice() reset the stream:
    the far reader sees StreamReset, not a clean FIN."""

    async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: the close sends RST

    tcp, port = await _tcp_server(reset_at_once)

    async def handler(stream: TunnelStream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream.accept()
        await splice(stream, reader, writer)

    try:
        async with tunnel_pair(handler) as pair:
            stream = await pair.client.open_stream(b"tcp")
            await stream.write(b"x")
            async with asyncio.timeout(WAIT):
                with pytest.raises(StreamReset) as err:
                    while await stream.read():
                        pass
            assert err.value.code == ErrorCode.CANCEL
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_session_ends_both_sides_on_client_close() -> None:
    """close() on one side ends run() on both; later opens raise TunnelClosed."""
    async with tunnel_pair(echo) as pair:
        await pair.client.close()
        async with asyncio.timeout(WAIT):
            await pair.client_task
            await pair.server.wait_closed()
        assert pair.server.closed
        with pytest.raises(TunnelClosed):
            await pair.client.open_stream(b"echo")


def test_allocator_tuning_reports_whether_it_applied() -> None:
    """tune_allocator() applies on glibc and says so; elsewhere it changes nothing."""
    import platform

    from tunnel.aio import tune_allocator

    applied = tune_allocator()
    assert applied is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


async def test_splice_streams_propagates_reset_code() -> None:
    """A RESET on one side of splice_streams() reaches the other side with the
    same code and reason."""
    pair_box: list[Pair] = []

    async def relay(stream: TunnelStream) -> None:
        stream.accept()
        onward = await pair_box[0].server.open_stream(b"refuser")
        await splice_streams(stream, onward)

    async def refuser(stream: TunnelStream) -> None:
        stream.accept()
        await stream.read()
        stream.reset(ErrorCode.FORBIDDEN, "no entry")

    async with tunnel_pair(relay, client_handler=refuser) as pair:
        pair_box.append(pair)
        stream = await pair.client.open_stream(b"relay")
        await stream.write(b"knock")
        async with asyncio.timeout(WAIT):
            with pytest.raises(StreamReset) as err:
                await stream.read()
        assert (err.value.code, err.value.reason) == (ErrorCode.FORBIDDEN, "no entry")
