"""The accepting side pings only after silence: a peer that pings us is alive.

A relay with thousands of idle agent sessions used to ping each of them every
``ping_interval`` while each agent pinged it too: twice the PING/PONG frames
needed. Now the accepting session skips its ping when the peer pinged it
during the last interval; a silent peer is still pinged (and found dead by the
timeout). The dialling side always pings, so the wire is never silent longer
than one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.support.waits import until
from tunnel import TunnelConfig, TunnelSession, server_websocket_response, ws_connect_kwargs

WAIT = 20.0  # bound for every wait (never reached when all is well)
INTERVAL = 0.1


@contextlib.asynccontextmanager
async def session_pair(server_config: TunnelConfig,
                       client_config: TunnelConfig) -> AsyncIterator[tuple[TunnelSession, TunnelSession]]:
    """(client, server) tunnel sessions over a real websocket on loopback."""
    servers: asyncio.Queue[TunnelSession] = asyncio.Queue()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(server_config)
        await ws.prepare(request)
        session = TunnelSession(ws, is_client=False, config=server_config, name="server")
        servers.put_nowait(session)
        await session.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/tunnel", **ws_connect_kwargs(client_config))
            client = TunnelSession(ws, is_client=True, config=client_config, name="client")
            task = asyncio.create_task(client.run())
            async with asyncio.timeout(WAIT):
                server = await servers.get()
            try:
                yield client, server
            finally:
                await client.close()
                async with asyncio.timeout(WAIT):
                    await task
    finally:
        await runner.cleanup()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TunnelSession, TunnelSession]]:
    """(client, server): the server pings after INTERVAL of silence, the
    client never by itself (the test pings by hand)."""
    async with session_pair(TunnelConfig(ping_interval=INTERVAL, ping_timeout=5.0),
                            TunnelConfig(ping_interval=0)) as sessions:
        yield sessions


async def test_session_pinged_by_its_peer_does_not_ping_and_pings_after_silence(
        pair: tuple[TunnelSession, TunnelSession]) -> None:
    """While the client pings every INTERVAL / 4, the server (interval
    INTERVAL) sends no PING of its own over many intervals; once the client
    falls silent, the server pings it within about two intervals."""
    client, server = pair

    async def ping_often() -> None:
        while True:
            await client.ping()
            await asyncio.sleep(INTERVAL / 4)

    pinger = asyncio.create_task(ping_often())
    try:
        await until(lambda: server.their_pings >= 40, "40 client pings (~10 server intervals)")
    finally:
        pinger.cancel()
    assert client.their_pings == 0, "the server pinged a peer that kept pinging it"
    await until(lambda: client.their_pings >= 1, "a server ping after silence")
    assert server.rtt is not None and server.rtt > 0


async def test_dialling_session_pings_every_interval_even_when_pinged() -> None:
    """The dialling side keeps pinging on schedule although the accepting side
    pings it too (it must keep middleboxes' idle timers from expiring)."""
    config = TunnelConfig(ping_interval=INTERVAL, ping_timeout=5.0)
    async with session_pair(config, config) as (client, server):

        async def server_pings_often() -> None:
            while True:
                await server.ping()
                await asyncio.sleep(INTERVAL / 4)

        pinger = asyncio.create_task(server_pings_often())
        try:
            await until(lambda: server.their_pings >= 5, "5 client pings while pinged")
        finally:
            pinger.cancel()
        assert client.their_pings >= 10
