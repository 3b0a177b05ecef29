"""Which failed dials the agent may retry fast (agent/connector_dial.py).

After losing its session the agent redials within 0.5 s only while nothing
listens at the relay's address (a refused TCP connect costs a restarting
relay nothing); a relay that is up but closes connections at accept (its
pre-authentication bound is full, in a reconnect storm) pays for every
redial, so those back off at the usual pace.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from agent.connector_dial import relay_not_listening
from certs import client_ssl_context


def _unused_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _dial_error(url: str) -> BaseException:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context())) as http:
        with pytest.raises((aiohttp.ClientError, OSError)) as caught:
            await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
    return caught.value


async def test_agent_dial_to_a_closed_port_counts_as_not_listening() -> None:
    """Nothing listening: connection refused, the fast redial applies."""
    error = await _dial_error(f"wss://127.0.0.1:{_unused_port()}/agent/v1/connect")
    assert relay_not_listening(error)


async def test_agent_dial_closed_at_accept_is_not_retried_fast() -> None:
    """A listener that closes each connection at accept (as the relay's full
    pre-authentication gate does): not 'not listening', so the usual backoff."""
    accepted = 0

    def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.transport.abort()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        error = await _dial_error(f"wss://127.0.0.1:{port}/agent/v1/connect")
    finally:
        server.close()
        await server.wait_closed()
    assert accepted == 1
    assert not relay_not_listening(error)
    assert not relay_not_listening(TimeoutError())
