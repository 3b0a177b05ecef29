"""Tests of the receive fast path (tunnel/aio_fastpath.py) over real loopback
websockets: it installs with this aiohttp, loses no byte however the socket
cuts the frames, keeps control messages working, processes what arrived
before it was installed, and falls back to the plain loop when aiohttp's
internals differ.
"""

from __future__ import annotations

import asyncio
import os
import random

import aiohttp
import pytest
from aiohttp import web

from tests.tunnel.test_aio import WAIT, _serve, echo, read_all, tunnel_pair
from tunnel import (
    TunnelConfig,
    TunnelSession,
    aio_fastpath,
    server_websocket_response,
    ws_connect_kwargs,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _aiohttp_dials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is aiohttp's: both ends of these sessions stay on aiohttp
    whatever ``$ARC_TUNNEL_TRANSPORT`` says."""
    monkeypatch.setenv("ARC_TUNNEL_TRANSPORT", "aiohttp")


async def _chopper(target_port: int, seed: int) -> tuple[asyncio.Server, int]:
    """A TCP proxy that forwards both ways in random small pieces (1..3000
    bytes, yielding to the loop between pieces), so websocket frames reach
    the parser cut at arbitrary points."""
    rng = random.Random(seed)

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                view = memoryview(data)
                while view:
                    n = rng.randint(1, 3000)
                    dst.write(bytes(view[:n]))
                    view = view[n:]
                    await dst.drain()
                    await asyncio.sleep(0)
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("fast", [True, False])
async def test_fast_path_delivers_bytes_exactly_under_random_chunking(fast: bool) -> None:
    """Three echo streams of random-sized writes through a proxy that re-cuts
    the TCP bytes at random: every byte comes back exactly, with the fast
    path on and off."""
    config = TunnelConfig(fast_dispatch=fast)
    sessions: list[TunnelSession] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(config)
        await ws.prepare(request)
        session = TunnelSession(ws, is_client=False, config=config, on_stream=echo)
        sessions.append(session)
        await session.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner, port = await _serve(app)
    chopper, chop_port = await _chopper(port, seed=7)
    rng = random.Random(11)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"http://127.0.0.1:{chop_port}/tunnel", **ws_connect_kwargs(config)
            )
            client = TunnelSession(ws, is_client=True, config=config)
            task = asyncio.create_task(client.run())

            async def one(size: int) -> None:
                stream = await client.open_stream(b"echo")
                payload = os.urandom(size)

                async def send() -> None:
                    view = memoryview(payload)
                    while view:
                        n = rng.randint(1, 200_000)
                        await stream.write(view[:n])
                        view = view[n:]
                    await stream.write_eof()

                sender = asyncio.create_task(send())
                assert await read_all(stream) == payload
                await sender

            async with asyncio.timeout(WAIT * 2):
                await asyncio.gather(one(700_000), one(300_000), one(1))
            assert (client.transport.pushing) is fast
            assert (sessions[0].transport.pushing) is fast
            await client.close()
            async with asyncio.timeout(WAIT):
                await task
    finally:
        chopper.close()
        await runner.cleanup()


async def test_fast_path_installs_with_this_aiohttp_and_control_messages_still_work() -> None:
    """With the installed aiohttp the fast path is on at both ends; websocket
    PINGs (answered by aiohttp) between tunnel frames change nothing, and the
    close handshake still ends both sessions."""
    async with tunnel_pair(echo) as pair:
        async with asyncio.timeout(WAIT):
            await pair.client.ping()  # both sessions are running
        assert pair.client.transport.pushing and pair.server.transport.pushing
        stream = await pair.client.open_stream(b"echo")
        payload = os.urandom(500_000)

        async def send() -> None:
            for i in range(0, len(payload), 50_000):
                await stream.write(payload[i : i + 50_000])
                await pair.server.transport.websocket.ping(b"p")  # a control message between frames
                await pair.client.transport.websocket.ping(b"q")
            await stream.write_eof()

        sender = asyncio.create_task(send())
        async with asyncio.timeout(WAIT):
            assert await read_all(stream) == payload
            await sender
            assert await pair.client.ping() >= 0


async def test_fast_path_processes_frames_that_arrived_before_it_was_installed() -> None:
    """A PING the server sent before the client session ran sits in aiohttp's
    queue; once the client session starts, the fast path drains it and the
    server gets its PONG."""
    config = TunnelConfig()
    servers: asyncio.Queue[TunnelSession] = asyncio.Queue()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(config)
        await ws.prepare(request)
        session = TunnelSession(ws, is_client=False, config=config)
        servers.put_nowait(session)
        await session.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/tunnel", **ws_connect_kwargs())
            async with asyncio.timeout(WAIT):
                server = await servers.get()
            pinger = asyncio.create_task(server.ping(timeout=WAIT))
            # Let the PING reach the client's parser before its session exists.
            async with asyncio.timeout(WAIT):
                while not ws._reader._buffer:
                    await asyncio.sleep(0.01)
            client = TunnelSession(ws, is_client=True, config=config)
            task = asyncio.create_task(client.run())
            async with asyncio.timeout(WAIT):
                assert await pinger >= 0
            assert client.transport.pushing
            await client.close()
            async with asyncio.timeout(WAIT):
                await task
    finally:
        await runner.cleanup()


async def test_fast_path_falls_back_to_receive_loop_when_aiohttp_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When aiohttp is older than the tested one (or lacks an internal), the
    fast path does not install and the plain receive() loop moves the bytes."""
    assert aio_fastpath.install_fast_path(object(), lambda data: True) is None
    monkeypatch.setattr(aio_fastpath, "MIN_AIOHTTP", (99, 0))
    async with tunnel_pair(echo) as pair:
        async with asyncio.timeout(WAIT):
            await pair.client.ping()  # both sessions are running
        assert not pair.client.transport.pushing and not pair.server.transport.pushing
        stream = await pair.client.open_stream(b"echo")
        payload = os.urandom(300_000)

        async def send() -> None:
            # Echo needs its output read while we write: 300 KB is more than
            # both initial stream windows together.
            await stream.write(payload)
            await stream.write_eof()

        async with asyncio.timeout(WAIT):
            sender = asyncio.create_task(send())
            assert await read_all(stream) == payload
            await sender
