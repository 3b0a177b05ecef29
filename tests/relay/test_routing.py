"""Routing through a real relay: client session -> relay -> agent -> TCP echo."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest

from relay.directory import SessionDirectory
from tests.support.relay import DEMO_OID, RelayEnv, roundtrip, running_env
from tests.support.servers import refusing_port, server_port, start_banner_server, start_echo_server
from tests.support.waits import WAIT, until
from tunnel import ErrorCode, StreamRefused, TunnelClosed, TunnelSession, ws_connect_kwargs


class WaitRecordingDirectory:
    """The relay's session directory, recording when a stream starts waiting
    for an agent that has no session yet (the grace period at work)."""

    def __init__(self, inner: SessionDirectory[TunnelSession]) -> None:
        self.inner = inner
        self.waiting_for: dict[str, asyncio.Event] = {}

    def register(self, cluster_id: str, session: TunnelSession) -> TunnelSession | None:
        return self.inner.register(cluster_id, session)

    def unregister(self, cluster_id: str, session: TunnelSession) -> bool:
        return self.inner.unregister(cluster_id, session)

    def get(self, cluster_id: str) -> TunnelSession | None:
        return self.inner.get(cluster_id)

    def is_present(self, cluster_id: str) -> bool:
        return self.inner.is_present(cluster_id)

    async def wait_for(self, cluster_id: str, timeout: float, *,
                       not_this: TunnelSession | None = None) -> TunnelSession | None:
        if self.inner.get(cluster_id) is None:
            self.waiting_for.setdefault(cluster_id, asyncio.Event()).set()
        return await self.inner.wait_for(cluster_id, timeout, not_this=not_this)

    def sessions(self) -> list[tuple[str, TunnelSession]]:
        return self.inner.sessions()


async def test_relay_routes_stream_bytes_exact(relay_env: RelayEnv) -> None:
    """A few MB sent through client -> relay -> agent -> echo come back byte-exact."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("demo"))
    payload = os.urandom(4 * 1024 * 1024 + 123)
    back = await roundtrip(client, b"rg1/alpha", payload)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()
    echo.close()


async def test_relay_refuses_stream_without_cluster_user_role(relay_env: RelayEnv) -> None:
    """A principal without cluster-user on the cluster gets RESET FORBIDDEN."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("demo"))
    try:
        await client.open_stream(b"rg1/alpha", timeout=10)
    except StreamRefused as exc:
        assert exc.code == ErrorCode.FORBIDDEN
        assert "cluster-user" in exc.reason
    else:
        raise AssertionError("stream was accepted without a role")
    echo.close()


async def test_relay_isolates_clusters_by_role(relay_env: RelayEnv) -> None:
    """A principal authorised for cluster A reaches A's upstream and is refused B."""
    server_a = await start_banner_server(b"A")
    server_b = await start_banner_server(b"B")
    keys_a = await relay_env.register("rg1", "alpha")
    keys_b = await relay_env.register("rg1", "beta")
    await relay_env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await relay_env.start_agent("rg1/alpha", keys_a, ("127.0.0.1", server_port(server_a)))
    await relay_env.start_agent("rg1/beta", keys_b, ("127.0.0.1", server_port(server_b)))
    await relay_env.wait_agent("rg1/alpha")
    await relay_env.wait_agent("rg1/beta")
    client = await relay_env.client(relay_env.token("demo"))
    for _ in range(3):
        assert await roundtrip(client, b"rg1/alpha", b"ping") == b"Aping"
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(b"rg1/beta", timeout=10)
        assert refused.value.code == ErrorCode.FORBIDDEN
    server_a.close()
    server_b.close()


async def test_relay_resets_unknown_cluster_not_found(relay_env: RelayEnv) -> None:
    """An admin asking for an unregistered cluster gets NOT_FOUND; a malformed target too."""
    client = await relay_env.client(relay_env.token("admin"))
    for target in (b"rg1/nope", b"no-slash", b"\xff\xfe/x"):
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(target, timeout=10)
        assert refused.value.code == ErrorCode.NOT_FOUND


async def test_relay_resets_offline_cluster_after_grace(relay_env: RelayEnv) -> None:
    """A registered cluster without an agent session: TARGET_UNAVAILABLE after the grace."""
    await relay_env.register("rg1", "alpha")
    client = await relay_env.client(relay_env.token("admin"))
    with pytest.raises(StreamRefused) as refused:
        await client.open_stream(b"rg1/alpha", timeout=10)
    assert refused.value.code == ErrorCode.TARGET_UNAVAILABLE
    assert "offline" in refused.value.reason


async def test_relay_passes_agent_connect_failure(relay_env: RelayEnv) -> None:
    """An agent whose upstream is down refuses with CONNECT_FAILED, passed to the client."""
    keys = await relay_env.register("rg1", "alpha")
    with refusing_port() as dead_port:
        await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", dead_port))
        await relay_env.wait_agent("rg1/alpha")
        client = await relay_env.client(relay_env.token("admin"))
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(b"rg1/alpha", timeout=10)
    assert refused.value.code == ErrorCode.CONNECT_FAILED


async def test_relay_waits_grace_for_agent_that_connects_late(relay_env: RelayEnv) -> None:
    """An OPEN that arrives before the agent connects is routed once it does:
    the agent is started only once the relay is waiting for it."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    relay_env.state.config = dataclasses.replace(relay_env.state.config, agent_grace_seconds=15.0)
    directory = relay_env.state.directory = WaitRecordingDirectory(relay_env.state.directory)
    client = await relay_env.client(relay_env.token("admin"))
    pending = asyncio.ensure_future(roundtrip(client, b"rg1/alpha", b"late"))
    waiting = directory.waiting_for.setdefault("rg1/alpha", asyncio.Event())
    await asyncio.wait_for(waiting.wait(), WAIT)
    assert not pending.done()
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    assert await asyncio.wait_for(pending, 30) == b"late"
    echo.close()


async def test_relay_restart_agent_reconnects(relay_env: RelayEnv) -> None:
    """After a relay restart on the same port the agent reconnects on its own
    and new streams are routed again."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    before = connector.sessions_started
    await relay_env.restart_relay()
    await relay_env.wait_agent("rg1/alpha")
    assert connector.sessions_started > before
    client = await relay_env.client(relay_env.token("admin"))
    assert await roundtrip(client, b"rg1/alpha", b"again") == b"again"
    echo.close()


async def test_relay_newer_agent_session_replaces_older(relay_env: RelayEnv) -> None:
    """A second authenticated agent for the same cluster takes over; the first drains."""
    server_1 = await start_banner_server(b"1")
    server_2 = await start_banner_server(b"2")
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(server_1)))
    first = await relay_env.wait_agent("rg1/alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(server_2)))
    second = await relay_env.wait_agent("rg1/alpha", not_this=first)
    assert second is not first
    client = await relay_env.client(relay_env.token("admin"))
    # The replaced agent redials on GOAWAY, so the live session may flip; every
    # stream still lands on exactly one of the two agents.
    assert (await roundtrip(client, b"rg1/alpha", b"x"))[1:] == b"x"
    server_1.close()
    server_2.close()


async def test_relay_exposes_metrics(relay_env: RelayEnv) -> None:
    """/metrics shows sessions, routed streams, bytes both ways and open latency."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("admin"))
    await roundtrip(client, b"rg1/alpha", b"z" * 1000)
    async with relay_env.http.get(relay_env.relay.health_url + "/metrics") as resp:
        text = await resp.text()
    assert 'arc_relay_sessions_open{kind="agent"} 1.0' in text
    assert 'arc_relay_streams_total{outcome="routed"} 1.0' in text
    assert 'arc_relay_bytes_total{direction="client_to_agent"} 1000.0' in text
    assert 'arc_relay_bytes_total{direction="agent_to_client"} 1000.0' in text
    assert "arc_relay_stream_open_seconds_count 1.0" in text
    echo.close()


async def test_relay_records_forwarded_data_when_hook_on(tmp_path: Path) -> None:
    """With debug.record_data_file set the router appends every DATA byte it forwards."""
    record = tmp_path / "record.bin"
    async with running_env(tmp_path, record_data_file=str(record)) as env:
        echo = await start_echo_server()
        keys = await env.register("rg1", "alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        await env.wait_agent("rg1/alpha")
        client = await env.client(env.token("admin"))
        assert await roundtrip(client, b"rg1/alpha", b"MARKER-1234") == b"MARKER-1234"
        echo.close()
    assert record.read_bytes() == b"MARKER-1234" * 2


async def test_relay_client_endpoint_refuses_bad_token(relay_env: RelayEnv) -> None:
    """/client/v1/connect without a valid OIDC token is a 401 before any upgrade."""
    url = relay_env.relay.url + "/client/v1/connect"
    for headers in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Bearer {relay_env.token('demo', audience='api://x')}"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await relay_env.http.ws_connect(url, headers=headers, **ws_connect_kwargs())
        assert refused.value.status == 401


async def test_relay_sends_goaway_when_client_token_expires(relay_env: RelayEnv) -> None:
    """A client session whose token expires is drained with GOAWAY (new streams need a new token)."""
    client = await relay_env.client(relay_env.token("admin", lifetime=1))
    async with asyncio.timeout(WAIT):
        await client.wait_closed()
    with pytest.raises((StreamRefused, TunnelClosed)):
        await client.open_stream(b"rg1/alpha", timeout=5)


async def test_relay_stop_drains_open_streams(relay_env: RelayEnv) -> None:
    """On shutdown the relay sends GOAWAY but lets an open stream finish byte-exact."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("admin"))
    stream = await client.open_stream(b"rg1/alpha", timeout=WAIT)
    await stream.write(b"first ")
    stopping = asyncio.ensure_future(relay_env.relay.stop(drain_seconds=WAIT))
    await until(lambda: client.goaway_received, "the relay's GOAWAY")
    assert not stopping.done()  # draining: the open stream holds the stop
    with pytest.raises(StreamRefused):
        await client.open_stream(b"rg1/alpha", timeout=5)
    await stream.write(b"second")
    await stream.write_eof()
    received = b""
    async with asyncio.timeout(WAIT):
        while data := await stream.read():
            received += data
    assert received == b"first second"
    await stream.aclose()
    async with asyncio.timeout(WAIT):
        await stopping
    echo.close()
