"""The adapter across two real processes over a loopback websocket.

The peer (tests/tunnel/peer_process.py) runs in its own Python interpreter, so
nothing is shared but the TCP connection: bytes must arrive exact both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.processes import ChildProcess
from tunnel import TunnelClosed, TunnelConfig, TunnelSession, TunnelStream, open_tunnel_websocket

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("client_transport")]
WAIT = 30.0


@contextlib.asynccontextmanager
async def peer_process() -> AsyncIterator[tuple[int, ChildProcess]]:
    """Start the peer process and yield its port and handle; stop it afterwards."""
    peer = await ChildProcess.start_async([sys.executable, "-m", "tests.tunnel.peer_process"],
                                          ready='"port"', name="peer_process", stdin=subprocess.PIPE,
                                          timeout=WAIT)
    try:
        yield int(json.loads(peer.ready_line)["port"]), peer
    finally:
        assert peer.proc.stdin is not None
        peer.proc.stdin.close()  # the peer exits on stdin EOF
        await asyncio.to_thread(peer.stop, signal.SIGTERM, 10)


async def read_all(stream: TunnelStream) -> bytes:
    """Read until FIN."""
    parts = []
    while data := await stream.read(1 << 20):
        parts.append(data)
    return b"".join(parts)


async def test_process_peer_moves_bytes_exactly_both_ways() -> None:
    """Upload (sha256 of 5 MB), download (5 MB seeded bytes) and a 3 MB echo on
    concurrent streams with a peer in another process: all byte-exact."""
    async with peer_process() as (port, _), aiohttp.ClientSession() as http:
        ws = await open_tunnel_websocket(http, f"ws://127.0.0.1:{port}/tunnel", headers={}, ssl_context=None,
                                         proxy=None, config=TunnelConfig())
        session = TunnelSession(ws, is_client=True, name="test")
        runner = asyncio.create_task(session.run())

        async def upload() -> None:
            data = os.urandom(5_000_000)
            stream = await session.open_stream(b"sha256")
            await stream.write(data)
            await stream.write_eof()
            assert await read_all(stream) == hashlib.sha256(data).digest()

        async def download() -> None:
            stream = await session.open_stream(b"source:5000000:7")
            await stream.write_eof()
            assert await read_all(stream) == random.Random(7).randbytes(5_000_000)

        async def echo() -> None:
            data = os.urandom(3_000_000)
            stream = await session.open_stream(b"echo")

            async def send() -> None:
                await stream.write(data)
                await stream.write_eof()

            sender = asyncio.create_task(send())
            assert await read_all(stream) == data
            await sender

        try:
            async with asyncio.timeout(WAIT):
                await asyncio.gather(upload(), download(), echo())
                assert await session.ping() > 0
        finally:
            await session.close()
            async with asyncio.timeout(WAIT):
                await runner


async def test_process_peer_killed_ends_session_with_tunnel_closed() -> None:
    """Killing the peer process mid-transfer ends the session: the blocked
    reader gets TunnelClosed and run() returns (no hang, nothing leaked)."""
    async with peer_process() as (port, proc), aiohttp.ClientSession() as http:
        ws = await open_tunnel_websocket(http, f"ws://127.0.0.1:{port}/tunnel", headers={}, ssl_context=None,
                                         proxy=None, config=TunnelConfig())
        session = TunnelSession(ws, is_client=True, name="test")
        runner = asyncio.create_task(session.run())
        stream = await session.open_stream(b"echo")
        await stream.write(b"still there?")
        assert await stream.readexactly(12) == b"still there?"
        proc.kill()  # SIGKILL mid-session
        async with asyncio.timeout(WAIT):
            with pytest.raises(TunnelClosed):
                await stream.read()
            await runner
        assert session.closed
