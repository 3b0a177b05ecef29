"""Slow-loris guards of the relay's listening port, over real TLS on loopback.

Each case opens raw sockets against a real relay whose edge limits are small,
waits for the relay to close them (read returns b'', bounded by WAIT) and
checks that a legitimate request is served meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certs import client_ssl_context
from relay.edge_limits import EdgeLimits
from tests.support.relay import RelayEnv, running_env
from tests.support.waits import WAIT, until

SHORT = 0.5  # seconds: the head and handshake timeouts of these relays


@pytest.fixture(params=["memorybio", "asyncio"])
async def edge_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A relay with short edge timeouts, on each TLS engine."""
    limits = EdgeLimits(tls_engine=request.param, tls_handshake_timeout=SHORT, head_timeout=SHORT,
                        max_head_bytes=4096, max_preauth_connections=64, keepalive_timeout=SHORT)
    async with running_env(tmp_path, edge=limits) as env:
        yield env


async def tls_open(env: RelayEnv) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TLS connection to the relay (handshake done, nothing sent)."""
    assert env.relay.ca_pem is not None
    return await asyncio.open_connection("127.0.0.1", env.relay.port,
                                         ssl=client_ssl_context(env.relay.ca_pem),
                                         server_hostname="localhost")


async def closed_by_relay(reader: asyncio.StreamReader) -> bytes:
    """Everything the relay sent until it closed (bounded by WAIT)."""
    received = b""
    async with asyncio.timeout(WAIT):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass  # a close without close_notify is still a close
    return received


async def served(env: RelayEnv) -> bool:
    """A legitimate request gets its answer."""
    async with env.http.get(env.relay.url + "/healthz") as resp:
        return resp.status == 200 and await resp.text() == "ok\n"


async def metric(env: RelayEnv, name: str) -> float:
    """One sample of the relay's /metrics (exact name with labels)."""
    async with env.http.get(env.relay.health_url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def test_relay_closes_connection_silent_after_tls(edge_env: RelayEnv) -> None:
    """A TLS session that sends no request is closed after the head timeout."""
    reader, writer = await tls_open(edge_env)
    assert await served(edge_env)
    assert await closed_by_relay(reader) == b""
    writer.close()
    assert await metric(edge_env, 'arc_relay_edge_closed_total{reason="head_timeout"}') == 1


async def test_relay_closes_connection_with_partial_head(edge_env: RelayEnv) -> None:
    """A request head that never ends is closed after the head timeout."""
    reader, writer = await tls_open(edge_env)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    await writer.drain()
    assert await served(edge_env)
    assert await closed_by_relay(reader) == b""
    writer.close()


async def test_relay_closes_connection_with_partial_upgrade_head(edge_env: RelayEnv) -> None:
    """A websocket upgrade head to the agent endpoint that never ends is closed."""
    reader, writer = await tls_open(edge_env)
    writer.write(b"GET /agent/v1/connect HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n")
    await writer.drain()
    assert await served(edge_env)
    assert await closed_by_relay(reader) == b""
    writer.close()
    assert await metric(edge_env, "arc_relay_edge_preauth_connections") == 0


async def test_relay_closes_partial_second_head_on_kept_alive_connection(edge_env: RelayEnv) -> None:
    """After a first request is answered, a partial next head is closed by the
    keep-alive timeout (the first-head guard has stepped out by then)."""
    reader, writer = await tls_open(edge_env)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    async with asyncio.timeout(WAIT):
        first = await reader.readuntil(b"ok\n")
    assert first.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: local")
    await writer.drain()
    assert await closed_by_relay(reader) == b""
    writer.close()


async def test_relay_closes_connection_that_never_starts_tls(edge_env: RelayEnv) -> None:
    """A TCP connection that sends nothing is closed after the TLS handshake timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge_env.relay.port)
    assert await served(edge_env)
    assert await closed_by_relay(reader) == b""
    writer.close()
    if edge_env.relay.config.edge.tls_engine == "memorybio":  # asyncio's engine times out inside asyncio
        assert await metric(edge_env, 'arc_relay_edge_closed_total{reason="tls_handshake_timeout"}') == 1
    assert edge_env.relay.listener.preauth_connections == 0


async def test_relay_closes_oversized_first_head(edge_env: RelayEnv) -> None:
    """A first head growing past max_head_bytes is closed before it is complete."""
    reader, writer = await tls_open(edge_env)
    writer.write(b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 8192)
    await writer.drain()
    assert await closed_by_relay(reader) == b""
    writer.close()
    assert await metric(edge_env, 'arc_relay_edge_closed_total{reason="head_too_large"}') == 1
    assert await served(edge_env)


async def test_relay_serves_head_sent_in_pieces_within_timeout(edge_env: RelayEnv) -> None:
    """A head split over several writes, finished in time, is answered."""
    reader, writer = await tls_open(edge_env)
    for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: localhost\r\n", b"Connection: close\r\n\r\n"):
        writer.write(piece)
        await writer.drain()
    answer = await closed_by_relay(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n")


async def test_relay_refuses_connections_beyond_preauth_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Beyond max_preauth_connections new connections are closed at once, with
    one log line per burst; a connection past its head no longer counts."""
    limits = EdgeLimits(tls_handshake_timeout=WAIT, head_timeout=WAIT, max_preauth_connections=3)
    async with running_env(tmp_path, edge=limits) as env:
        listener = env.relay.listener
        # A kept-alive client whose request is done does not hold a slot.
        assert await served(env)
        silent = [await tls_open(env) for _ in range(2)]
        await until(lambda: listener.preauth_connections == 2, "2 connections before their head")
        assert await served(env)
        silent.append(await tls_open(env))
        await until(lambda: listener.preauth_connections == 3, "3 connections before their head")
        caplog.set_level(logging.INFO, logger="relay")
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", env.relay.port)
            assert await closed_by_relay(reader) == b""
            writer.close()
        assert listener.gate.refused == 3
        assert sum("edge refusing new connections" in r.getMessage() for r in caplog.records) == 1
        # Freeing the slots lets new clients in again.
        for _, writer in silent:
            writer.close()
        await until(lambda: listener.preauth_connections == 0, "no connection before its head")
        assert await served(env)
        assert await metric(env, "arc_relay_edge_refused_total") == 3
