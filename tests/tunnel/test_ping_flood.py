"""A peer that floods tunnel PINGs (or anything that earns a reply) and never
reads: the session's queued replies stay bounded and it is closed with
ENHANCE_YOUR_CALM, while another session on the same server is still served.

Real aiohttp server on 127.0.0.1; the flooder is a raw blocking socket that
does the websocket handshake by hand and then only writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import threading
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.waits import until
from tests.tunnel.test_aio import WAIT, _serve, echo, read_all
from tunnel import (
    SUBPROTOCOL,
    Frame,
    TunnelConfig,
    TunnelSession,
    open_tunnel_websocket,
    server_websocket_response,
    ws_connect_kwargs,
)
from tunnel.aio_config import adapter_limits

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("client_transport")]

MAX_REPLIES = 256  # small, so that the test floods well past it quickly
PINGS_PER_WRITE = 64
# What the flooder would push without the cap: 2 M PINGs (~40 MB of PONGs queued).
PING_BUDGET = 2_000_000


def _masked(payload: bytes) -> bytes:
    """One client->server binary websocket frame (zero mask key: XOR is identity)."""
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def _handshake(port: int) -> socket.socket:
    """Connect with a tiny receive buffer and upgrade to arc-tunnel.v1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /tunnel HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: read the handshake and nothing after it
        assert chunk, "server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _flood(sock: socket.socket, result: dict[str, Any]) -> None:
    """Send PINGs until the server drops us (never reads a byte)."""
    batch = _masked(Frame.ping(b"floodflo").serialize()) * PINGS_PER_WRITE
    sent = 0
    try:
        while sent < PING_BUDGET:
            sock.sendall(batch)
            sent += PINGS_PER_WRITE
    except OSError as exc:  # reset / broken pipe once the server closed us
        result["error"] = type(exc).__name__
    result["sent"] = sent
    sock.close()


async def test_ping_flood_without_reading_is_closed_with_enhance_your_calm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flooding PINGs without reading: the server session's queued PONGs never
    pass the cap, its websocket write buffer stays small, the session ends
    with ENHANCE_YOUR_CALM in one log line (no traceback), and a second
    session on the same server moves bytes before and after."""
    caplog.set_level(logging.INFO, logger="tunnel")
    config = TunnelConfig(limits=adapter_limits(max_queued_replies=MAX_REPLIES))
    sessions: list[TunnelSession] = []
    transports: list[asyncio.Transport] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(config)
        await ws.prepare(request)
        session = TunnelSession(
            ws, is_client=False, config=config, name=f"server{len(sessions)}", on_stream=echo
        )
        sessions.append(session)
        assert request.transport is not None
        transports.append(request.transport)  # type: ignore[arg-type]
        await session.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await open_tunnel_websocket(http, f"ws://127.0.0.1:{port}/tunnel", headers={},
                                             ssl_context=None, proxy=None, config=config)
            good = TunnelSession(ws, is_client=True, config=config, name="good")
            good_task = asyncio.create_task(good.run())

            async def echo_once(size: int) -> None:
                stream = await good.open_stream(b"echo")
                payload = os.urandom(size)

                async def send() -> None:
                    await stream.write(payload)
                    await stream.write_eof()

                sender = asyncio.create_task(send())
                assert await read_all(stream) == payload
                await sender

            async with asyncio.timeout(WAIT):
                await echo_once(200_000)
            flooder = await asyncio.to_thread(_handshake, port)
            await until(lambda: len(sessions) == 2, "both server sessions")
            victim, victim_transport = sessions[1], transports[1]
            result: dict[str, Any] = {}
            thread = threading.Thread(target=_flood, args=(flooder, result), daemon=True)
            thread.start()
            most_queued = most_buffered = 0
            async with asyncio.timeout(WAIT):
                while not victim.closed:
                    most_queued = max(most_queued, victim._core.queued_replies)
                    most_buffered = max(most_buffered, victim_transport.get_write_buffer_size())
                    await asyncio.sleep(0)  # sample once per loop iteration
                await echo_once(200_000)  # the other session is still served
                await victim.wait_closed()
            await asyncio.to_thread(thread.join, WAIT)
            assert "ENHANCE_YOUR_CALM" in victim.close_reason
            assert result["sent"] < PING_BUDGET, "the flooder was cut off"
            assert most_queued <= MAX_REPLIES
            assert most_buffered < 2 * 1024 * 1024
            assert not good.closed and good.streams == 0
            lines = [r for r in caplog.records if "ENHANCE_YOUR_CALM" in r.getMessage()]
            assert len([r for r in lines if r.levelno >= logging.WARNING]) == 1
            assert all(r.exc_info is None for r in caplog.records)
            await good.close()
            await good_task
    finally:
        await runner.cleanup()


def test_queued_replies_cap_ends_the_session_in_the_core() -> None:
    """Sans-I/O: PINGs past the cap without data_to_send() fail the session
    with ENHANCE_YOUR_CALM; taking the output resets the count."""
    from tunnel import Connection, ErrorCode, Limits, RemoteProtocolError

    conn = Connection(is_client=False, limits=Limits(max_queued_replies=3))
    ping = Frame.ping(b"12345678").serialize()
    for _ in range(3):
        conn.receive(ping)
    conn.data_to_send()
    for _ in range(3):
        conn.receive(ping)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive(ping)
    assert info.value.error_code is ErrorCode.ENHANCE_YOUR_CALM
    assert conn.closed
    goaway = Frame.parse(conn.data_to_send()[-1])
    assert goaway.error_code is ErrorCode.ENHANCE_YOUR_CALM
    with contextlib.suppress(Exception):
        conn.receive(ping)


async def test_many_pings_from_a_reading_client_are_all_answered() -> None:
    """The cap is about not reading, not about volume: a client that sends far
    more PINGs than the cap (in modest batches) while reading its PONGs gets
    every PONG and keeps its session."""
    config = TunnelConfig(limits=adapter_limits(max_queued_replies=MAX_REPLIES))
    sessions: list[TunnelSession] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(config)
        await ws.prepare(request)
        session = TunnelSession(ws, is_client=False, config=config, name="server")
        sessions.append(session)
        await session.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner, port = await _serve(app)
    total = 40 * MAX_REPLIES
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"http://127.0.0.1:{port}/tunnel", **ws_connect_kwargs(config)
            )
            pongs = 0

            async def read_pongs() -> None:
                nonlocal pongs
                while pongs < total:
                    msg = await ws.receive()
                    assert msg.type is aiohttp.WSMsgType.BINARY, msg
                    pongs += Frame.parse(msg.data).type == Frame.pong(b"12345678").type

            reader = asyncio.create_task(read_pongs())
            ping = Frame.ping(b"12345678").serialize()
            async with asyncio.timeout(WAIT):
                for _ in range(total // PINGS_PER_WRITE):
                    for _ in range(PINGS_PER_WRITE):
                        await ws.send_bytes(ping)
                    await asyncio.sleep(0)  # let the reader run between batches
                await reader
            assert pongs == total
            assert sessions and not sessions[0].closed
            await ws.close()
    finally:
        await runner.cleanup()
