"""The health listener answers while the public port is saturated, and bounds itself.

The storm case fills the public listener's pre-authentication slots with silent
TLS connections (what thousands of queued agent handshakes look like to the
relay): the public port then closes every new connection at accept, while
``/readyz`` and ``/metrics`` on the health listener still answer. No timing
assertion: the proof is that they answer at all while the public port cannot.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from certs import client_ssl_context
from health import HealthLimits, HealthListener
from relay import RelayConfig, RelayServer
from relay.config import ConfigError
from relay.edge_limits import EdgeLimits
from tests.support.relay import RelayEnv, running_env
from tests.support.waits import WAIT

SLOTS = 4  # limits.max_preauth_connections of the storm relay


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll an in-process condition (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the peer closed (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        try:
            while await reader.read(65536):
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass  # a close without close_notify is still a close
    return True


async def silent_tls(env: RelayEnv) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the public port that completes its handshake and sends nothing."""
    assert env.relay.ca_pem is not None
    return await asyncio.open_connection("127.0.0.1", env.relay.port,
                                         ssl=client_ssl_context(env.relay.ca_pem),
                                         server_hostname="localhost")


async def refused_by_public_port(env: RelayEnv) -> bool:
    """True when a new TLS connection to the public port is closed without being
    served: at accept (memorybio engine) or right after its handshake (asyncio engine)."""
    try:
        reader, writer = await silent_tls(env)
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        return True
    closed = await closed_by_peer(reader)
    writer.close()
    return closed


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("engine", ["memorybio", "asyncio"])
async def test_health_listener_answers_while_public_preauth_slots_are_full(tmp_path: Path, engine: str) -> None:
    """With every pre-authentication slot of the public port held by a silent TLS
    connection, a new public connection is closed at accept, yet /readyz, /livez
    and /metrics on the health listener answer, and /metrics shows the full gate."""
    limits = EdgeLimits(tls_engine=engine, max_preauth_connections=SLOTS, head_timeout=WAIT * 3,
                        tls_handshake_timeout=WAIT * 3)
    async with running_env(tmp_path, edge=limits) as env:
        listener = env.relay.listener
        silent = [await silent_tls(env) for _ in range(SLOTS)]
        await wait_until(lambda: listener.preauth_connections == SLOTS)
        # The public port is saturated: a new connection is closed unserved.
        assert await refused_by_public_port(env)
        assert listener.gate.refused == 1
        # The health listener is untouched by it.
        assert await get(env.relay.health_url + "/readyz") == (200, "ok\n")
        assert await get(env.relay.health_url + "/livez") == (200, "ok\n")
        status, text = await get(env.relay.health_url + "/metrics")
        assert status == 200
        assert f"arc_relay_edge_preauth_connections {float(SLOTS)}" in text
        assert "arc_relay_edge_refused_total 1.0" in text
        for _, w in silent:
            w.close()
        await wait_until(lambda: listener.preauth_connections == 0)


async def test_health_listener_refuses_connections_beyond_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    """Beyond health.max_connections a new connection is closed at accept and
    counted, one warning per burst; once one is released the listener serves again."""
    registry = CollectorRegistry()
    health = HealthListener(registry, {}, limits=HealthLimits(max_connections=2, connection_seconds=WAIT * 3))
    registry.register(health.collector("arc_test"))
    await health.start("127.0.0.1", 0)
    try:
        held = [await asyncio.open_connection("127.0.0.1", health.port) for _ in range(2)]
        await wait_until(lambda: health.open_connections == 2)
        caplog.set_level(logging.WARNING, logger="health")
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
            assert await closed_by_peer(reader)
            writer.close()
        assert health.refused_connections == 2
        assert sum("refusing new connections" in r.getMessage() for r in caplog.records) == 1
        held[0][1].close()
        await wait_until(lambda: health.open_connections == 1)
        status, text = await get(health.url + "/metrics")
        assert status == 200 and "arc_test_health_connections_refused_total 2.0" in text
        held[1][1].close()
    finally:
        await health.stop()


async def test_health_listener_closes_a_connection_after_connection_seconds() -> None:
    """A connection that never sends a request is closed after health.connection_seconds."""
    health = HealthListener(CollectorRegistry(), {}, limits=HealthLimits(connection_seconds=0.2))
    await health.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        assert await closed_by_peer(reader)
        writer.close()
        await wait_until(lambda: health.open_connections == 0)
    finally:
        await health.stop()


async def test_health_listener_reports_failed_checks() -> None:
    """/readyz names each failed check; ?verbose lists all of them."""
    health = HealthListener(CollectorRegistry(), {"a": lambda: None, "b": lambda: "b is down"})
    await health.start("127.0.0.1", 0)
    try:
        assert await get(health.url + "/readyz") == (503, "[-]b failed: b is down\n")
        assert await get(health.url + "/readyz?verbose") == (
            503, "[+]a ok\n[-]b failed: b is down\nfailed: b\n")
        assert await get(health.url + "/livez") == (200, "ok\n")
    finally:
        await health.stop()


async def test_relay_start_fails_with_one_line_when_health_port_is_taken(tmp_path: Path) -> None:
    """A health.listen port in use is a ConfigError naming the key, and the public
    port the relay had bound is released again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = RelayServer(RelayConfig(port=0, state_dir=str(tmp_path), health_port=port))
        with pytest.raises(ConfigError, match=rf"cannot listen on health.listen 127.0.0.1:{port}: .*'health.listen'"):
            await relay.start()
        assert relay.state is not None and not relay.state.accepting
