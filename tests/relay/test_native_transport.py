"""The relay's connect paths on the native websocket (``listener.transport:
native``, relay/native_upgrade.py): agents and clients served end to end,
refusals equal to aiohttp's (status, headers that matter, body, log line),
and the edge guards (head timeout, pre-authentication gate) and the
handshake's own bounds (timeout, admission) holding for native upgrades."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certs import client_ssl_context
from relay import IssuerConfig, RelayConfig, RelayServer
from relay.edge_limits import EdgeLimits
from relay.native_upgrade import upgrade_path
from tests.relay.test_edge_slowloris import closed_by_relay, served, tls_open
from tests.support.relay import DEMO_OID, RelayEnv, roundtrip, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, until
from tunnel.aio import NativeWebSocket

SHORT = 0.5  # seconds: head and handshake timeouts of the relays that test them
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_head(path: str, authorization: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Protocol: arc-tunnel.v1"]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answer(relay: RelayServer, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` on a new TLS connection: (status, headers, body) of the answer."""
    assert relay.ca_pem is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port,
                                                   ssl=client_ssl_context(relay.ca_pem),
                                                   server_hostname="localhost")
    try:
        writer.write(head)
        async with asyncio.timeout(WAIT):
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split(" ")[1]), headers, body
    finally:
        writer.close()


@pytest.fixture(params=["aiohttp", "native"])
async def either_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RelayEnv]:
    async with running_env(tmp_path, edge=EdgeLimits(transport=request.param)) as env:
        yield env


async def native_env(tmp_path: Path, **edge: float) -> RelayEnv:
    return await RelayEnv.start(tmp_path, edge=EdgeLimits(transport="native", **edge))


def test_upgrade_path_takes_only_websocket_upgrade_gets() -> None:
    assert upgrade_path(upgrade_head("/agent/v1/connect?x=1")) == "/agent/v1/connect"
    assert upgrade_path(b"GET /client/v1/connect HTTP/1.1\r\nHost: x\r\n\r\n") is None
    assert upgrade_path(upgrade_head("/x").replace(b"GET", b"POST", 1)) is None
    assert upgrade_path(b"GET /agent/v1/connect HTTP/1.1\nUpgrade: websocket\n\n") is None


async def test_native_relay_serves_agent_and_client_end_to_end(tmp_path: Path) -> None:
    """Bytes go client -> native relay -> agent -> echo and back byte-exact;
    both relay-side sessions run on NativeWebSocket; the management API and
    health stay on aiohttp on the same port."""
    env = await native_env(tmp_path)
    echo = await start_echo_server()
    try:
        keys = await env.register("rg1", "alpha")
        await env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        agent_session = await env.wait_agent("rg1/alpha")
        assert isinstance(agent_session.transport, NativeWebSocket)
        client = await env.client(env.token("demo"))
        payload = os.urandom(1024 * 1024 + 7)
        back = await roundtrip(client, b"rg1/alpha", payload)
        assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
        client_sessions = list(env.state.client_sessions)
        assert client_sessions and all(isinstance(s.transport, NativeWebSocket) for s in client_sessions)
        assert await served(env)
        status, body = await env.api("GET", "/api/v1/clusters", env.token("admin"))
        assert status == 200, body
    finally:
        echo.close()
        await env.close()


REFUSALS = [
    ("/agent/v1/connect", None),
    ("/agent/v1/connect", "Bearer not-a-jwt"),
    ("/client/v1/connect", None),
    ("/client/v1/connect", "Bearer not-a-jwt"),
]


async def _refusals(env: RelayEnv, caplog: pytest.LogCaptureFixture
                    ) -> list[tuple[int, str | None, str | None, bytes, list[str]]]:
    out = []
    for path, authorization in REFUSALS:
        caplog.clear()
        status, headers, body = await answer(env.relay, upgrade_head(path, authorization))
        lines = [r.getMessage() for r in caplog.records if r.name == "relay"]
        out.append((status, headers.get("www-authenticate"), headers.get("content-type"), body, lines))
    env.state.accepting = False
    caplog.clear()
    status, headers, body = await answer(env.relay, upgrade_head("/agent/v1/connect", "Bearer x"))
    out.append((status, headers.get("retry-after"), headers.get("content-type"), body, []))
    env.state.accepting = True

    async def busy() -> bool:
        return False

    env.state.admission.admit = busy
    status, headers, body = await answer(env.relay, upgrade_head("/client/v1/connect", "Bearer x"))
    out.append((status, headers.get("retry-after"), headers.get("content-type"), body, []))
    return out


async def test_refusals_are_the_same_on_both_transports(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Every refusal of the connect paths (no or a bad assertion, no or a bad
    bearer, shutting down, admission full) has the same status, headers,
    body and log line on aiohttp and on the native transport."""
    caplog.set_level(logging.INFO, logger="relay")
    seen = {}
    for transport in ("aiohttp", "native"):
        async with running_env(tmp_path / transport, edge=EdgeLimits(transport=transport)) as env:
            seen[transport] = await _refusals(env, caplog)
    assert [r[0] for r in seen["native"]] == [401, 401, 401, 401, 503, 503]
    assert seen["native"] == seen["aiohttp"]
    assert all(lines for *_, lines in seen["native"][:4])  # each refusal logged one line


async def test_native_upgrade_with_partial_head_is_closed_by_the_head_timeout(tmp_path: Path) -> None:
    """The edge's head timeout and size bound hold a native-bound upgrade."""
    env = await native_env(tmp_path, head_timeout=SHORT, max_head_bytes=4096)
    try:
        reader, writer = await tls_open(env)
        writer.write(upgrade_head("/agent/v1/connect")[:-2])  # the blank line never comes
        assert await closed_by_relay(reader) == b""
        writer.close()
        reader, writer = await tls_open(env)
        writer.write(upgrade_head("/agent/v1/connect")[:-4] + b"\r\nX-Pad: " + b"a" * 8192)
        assert await closed_by_relay(reader) == b""
        writer.close()
        assert env.relay.listener.stats.closed["head timeout"] == 1
        assert env.relay.listener.stats.closed["head too large"] == 1
        assert await served(env)
    finally:
        await env.close()


async def test_native_upgrade_holds_a_preauth_slot_until_its_head_is_complete(tmp_path: Path) -> None:
    """Connections before their first head (native-bound or not) count
    against max_preauth_connections; a completed native upgrade head frees its slot."""
    env = await native_env(tmp_path, max_preauth_connections=2, head_timeout=WAIT)
    try:
        listener = env.relay.listener
        held = [await tls_open(env) for _ in range(2)]
        for _, writer in held:
            writer.write(upgrade_head("/client/v1/connect")[:20])
        await until(lambda: listener.preauth_connections == 2, "2 connections before their head")
        reader, writer = await asyncio.open_connection("127.0.0.1", env.relay.port)
        assert await closed_by_relay(reader) == b""  # the gate is full
        writer.close()
        reader, writer = held[0]
        writer.write(upgrade_head("/client/v1/connect")[20:])
        await until(lambda: listener.preauth_connections == 1, "the completed head's slot freed")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 401 ")
        for _, writer in held:
            writer.close()
    finally:
        await env.close()


async def test_native_client_handshake_stuck_on_issuer_is_504_within_the_bound(tmp_path: Path) -> None:
    """limits.tunnel.handshake_timeout bounds a native client handshake whose
    issuer never answers: 504 HandshakeTimeout, the relay serving others meanwhile."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    stall = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    issuer = f"https://127.0.0.1:{stall.sockets[0].getsockname()[1]}"
    relay = RelayServer(RelayConfig(
        host="127.0.0.1", port=0, state_dir=str(tmp_path / "relay"),
        issuers=(IssuerConfig(issuer, ("api://cluster-connect",)),),
        tunnel={"handshake_timeout": SHORT}, edge=EdgeLimits(transport="native"),
    ))
    await relay.start()
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"iss": issuer, "aud": "api://cluster-connect", "oid": "x", "sub": "x",
                        "exp": int(time.time()) + 600}, key, algorithm="ES256", headers={"kid": "k1"})
    try:
        status, _, body = await answer(relay, upgrade_head("/client/v1/connect", f"Bearer {token}"))
        assert status == 504
        assert b'"HandshakeTimeout"' in body
        assert relay.state is not None and relay.state.admission.in_flight == 0
    finally:
        for writer in held:
            writer.close()
        stall.close()
        await relay.stop()


async def test_either_transport_serves_a_plain_get_on_a_connect_path_through_aiohttp(
        either_env: RelayEnv) -> None:
    """A request on a connect path that is no upgrade is aiohttp's on both
    transports (the native router takes only upgrades): the same answer."""
    async with either_env.http.get(either_env.relay.url + "/client/v1/connect") as resp:
        assert resp.status == 401
