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
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tunnel import TunnelClosed, TunnelSession, TunnelStream, ws_connect_kwargs

pytestmark = pytest.mark.timeout(60)
WAIT = 30.0
ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def peer_process() -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """Start the peer process and yield its port and handle; stop it afterwards."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tunnel.peer_process",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            line = await proc.stdout.readline()
        yield int(json.loads(line)["port"]), proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the peer exits on stdin EOF
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


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
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/tunnel", **ws_connect_kwargs())
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
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/tunnel", **ws_connect_kwargs())
        session = TunnelSession(ws, is_client=True, name="test")
        runner = asyncio.create_task(session.run())
        stream = await session.open_stream(b"echo")
        await stream.write(b"still there?")
        assert await stream.readexactly(12) == b"still there?"
        proc.kill()
        async with asyncio.timeout(WAIT):
            with pytest.raises(TunnelClosed):
                await stream.read()
            await runner
        assert session.closed
