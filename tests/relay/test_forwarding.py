"""Forwarding between relay replicas (relay/peering.py): an agent on relay A,
a client on relay B, a real redis-server for presence, peer links with
mutual TLS, everything on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from certs import (
    CertificateAuthority,
    KeyPair,
    client_ssl_context,
    server_ssl_context,
    write_pem_pair,
)
from identity.agent_assertion import sign_agent_assertion
from relay import RelayServer
from relay.config import ConfigError, agent_endpoint_url, relay_config_from_dict
from relay.peering import (
    PEER_CONNECT_PATH,
    STALE_ROUTE,
    PeerUnreachable,
    issue_peer_files,
    peer_target,
)
from relay.presence import Route
from relay.presence_redis import presence_key
from tests.support.relay import DEMO_OID, RelayEnv, roundtrip
from tests.support.replicas import Replicas, running_replicas
from tests.support.servers import server_port, start_echo_server, start_firehose_or_echo_server
from tests.support.waits import WAIT, until, until_async
from tunnel import ErrorCode, StreamRefused, TunnelSession, splice, ws_connect_kwargs
from tunnel.limits import INITIAL_STREAM_WINDOW

pytestmark = pytest.mark.e2e

CLUSTER = "rg1/alpha"


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with running_replicas(tmp_path) as pair:
        yield pair


async def routes_on(env: RelayEnv, cid: str, replica: str) -> list[Route]:
    """The presence routes of ``cid`` that ``env`` sees on ``replica`` (empty: none yet)."""
    return [r for r in await env.state.presence.lookup(cid) if r.replica_id == replica]


async def agent_on_a(pair: Replicas) -> KeyPair:
    """Register the cluster, grant demo, start its agent on relay A and wait
    until relay B sees its route in presence."""
    echo = await start_echo_server()
    keys = await pair.a.register("rg1", "alpha")
    await pair.a.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await pair.a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(echo)))
    await pair.a.wait_agent(CLUSTER)
    await until_async(lambda: routes_on(pair.b, CLUSTER, "relay-a"), "relay A's route seen by relay B")
    return keys


async def test_stream_on_b_reaches_agent_on_a_byte_exact(replicas: Replicas) -> None:
    """A client of relay B opens the cluster whose agent is on relay A: the
    stream crosses one peer link, bytes come back exact, the link is reused
    by the next stream and counted on both replicas."""
    await agent_on_a(replicas)
    assert replicas.b.state.directory.get(CLUSTER) is None
    client = await replicas.b.client(replicas.b.token("demo"))
    payload = os.urandom(3 * 1024 * 1024 + 17)
    back = await roundtrip(client, CLUSTER.encode(), payload)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    assert await roundtrip(client, CLUSTER.encode(), b"second") == b"second"
    b_metrics, a_metrics = replicas.b.state.metrics, replicas.a.state.metrics
    assert b_metrics.sample("arc_relay_streams_forwarded_total",
                            {"direction": "out", "outcome": "forwarded"}) == 2
    assert a_metrics.sample("arc_relay_streams_forwarded_total",
                            {"direction": "in", "outcome": "forwarded"}) == 2
    assert b_metrics.sample("arc_relay_peer_link_events_total", {"direction": "out", "event": "up"}) == 1
    assert b_metrics.sample("arc_relay_peer_links_open", {"direction": "out"}) == 1
    assert a_metrics.sample("arc_relay_peer_links_open", {"direction": "in"}) == 1


async def test_first_streams_to_a_replica_share_one_dial(replicas: Replicas) -> None:
    """Eight streams opened at once before any link exists: one dial, one
    link, every stream through it."""
    await agent_on_a(replicas)
    client = await replicas.b.client(replicas.b.token("demo"))
    payloads = [os.urandom(1000) for _ in range(8)]
    backs = await asyncio.gather(*(roundtrip(client, CLUSTER.encode(), p) for p in payloads))
    assert backs == payloads
    metrics = replicas.b.state.metrics
    assert metrics.sample("arc_relay_peer_link_events_total", {"direction": "out", "event": "up"}) == 1
    assert (metrics.sample("arc_relay_peer_link_events_total",
                           {"direction": "out", "event": "dial_failed"}) or 0) == 0


async def test_stalled_streams_across_the_hop_do_not_slow_another_stream(replicas: Replicas) -> None:
    """Twelve stalled readers on relay B whose agent is on relay A (all on one
    peer link): another stream across the same link still moves 2 MiB
    byte-exact, the stalled ones stay stalled, and each relay holds no more
    than the windows it granted (per-stream credit across the extra hop)."""
    upstream = await start_firehose_or_echo_server()
    keys = await replicas.a.register("rg1", "alpha")
    await replicas.a.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await replicas.a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(upstream)))
    agent_leg = await replicas.a.wait_agent(CLUSTER)
    await until_async(lambda: routes_on(replicas.b, CLUSTER, "relay-a"), "relay A's route seen by relay B")
    client = await replicas.b.client(replicas.b.token("demo"))
    try:
        stalled = []
        for _ in range(12):
            stream = await client.open_stream(CLUSTER.encode(), timeout=WAIT)
            await stream.write(b"F")
            stalled.append(stream)
        await until(lambda: all(s.buffered >= INITIAL_STREAM_WINDOW for s in stalled),
                    "stalled client windows full")
        assert replicas.b.state.peering is not None
        link = next(iter(replicas.b.state.peering.links.live.values()))
        await until(lambda: link.buffered >= len(stalled) * INITIAL_STREAM_WINDOW,
                    "the stall reached relay B's end of the peer link")
        payload = b"E" + os.urandom(2 * 1024 * 1024)
        assert await roundtrip(client, CLUSTER.encode(), payload) == payload[1:]
        assert not any(s.done for s in stalled)
        assert all(s.buffered <= INITIAL_STREAM_WINDOW for s in stalled)
        assert link.buffered <= link.buffer_bound <= link.config.limits.buffer_bound
        assert agent_leg.buffered <= agent_leg.buffer_bound <= agent_leg.config.limits.buffer_bound
        for s in stalled:
            s.reset()
    finally:
        upstream.close()


async def test_status_is_connected_on_every_replica_via_presence(replicas: Replicas) -> None:
    """The agent is on relay A only: relay B's management API says Connected
    (presence), and B's start-up reconciliation keeps the stored Connected
    row; once the agent is gone B says Offline."""
    await agent_on_a(replicas)
    admin = replicas.b.token("admin")
    status, body = await replicas.b.api("GET", "/api/v1/resourceGroups/rg1/clusters/alpha", admin)
    assert status == 200 and body["connectivityStatus"] == "Connected", body
    status, listed = await replicas.b.api("GET", "/api/v1/clusters", admin)
    assert status == 200
    assert [c["connectivityStatus"] for c in listed["value"]] == ["Connected"], listed
    store = replicas.b.state.registry.store

    async def stored_connected() -> bool:
        cluster = await store.get(CLUSTER)
        return cluster is not None and cluster.connectivity_status == "Connected"

    await until_async(stored_connected, "relay A's write-behind stored Connected")
    assert await replicas.b.state.registry.reconcile() == 0
    assert await stored_connected()
    for connector, _ in replicas.a.connectors:
        await connector.stop()

    async def offline_on_b() -> bool:
        _, body = await replicas.b.api("GET", "/api/v1/resourceGroups/rg1/clusters/alpha", admin)
        return bool(body["connectivityStatus"] == "Offline")

    await until_async(offline_on_b, "Offline on relay B once the agent left relay A")


async def test_stale_route_fails_fast_then_agent_on_b_serves(replicas: Replicas) -> None:
    """Relay A stops while presence still holds its route (what kill -9 leaves
    until the expiry): a stream on B is refused 'offline' within the agent
    grace (the dead route is skipped, no hang); once the agent connects to B,
    the next stream succeeds."""
    keys = await agent_on_a(replicas)
    [route] = await routes_on(replicas.b, CLUSTER, "relay-a")
    for connector, _ in replicas.a.connectors:
        await connector.stop()
    await replicas.stop_a()
    # Put back the route A's shutdown removed: a killed relay leaves it behind.
    redis = replicas.redis.client()
    seconds, micros = await redis.time()
    expires_ms = seconds * 1000 + micros // 1000 + 60_000
    await redis.hset(presence_key(CLUSTER), "relay-a", f"{route.session_id} {expires_ms} {route.address}")
    await redis.aclose()
    assert await routes_on(replicas.b, CLUSTER, "relay-a")
    client = await replicas.b.client(replicas.b.token("demo"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StreamRefused) as refused:
        await client.open_stream(CLUSTER.encode(), timeout=WAIT)
    took = loop.time() - started
    assert refused.value.code == ErrorCode.TARGET_UNAVAILABLE and "offline" in refused.value.reason
    print(f"refused 'offline' {took:.2f} s after the OPEN (agent grace "
          f"{replicas.b.relay.config.agent_grace_seconds} s)")
    b_metrics = replicas.b.state.metrics
    assert (b_metrics.sample("arc_relay_streams_forwarded_total",
                             {"direction": "out", "outcome": "unreachable"}) or 0) >= 1
    echo = await start_echo_server()
    await replicas.b.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(echo)))
    await replicas.b.wait_agent(CLUSTER)
    assert await roundtrip(client, CLUSTER.encode(), b"back") == b"back"
    echo.close()


async def test_peer_refuses_a_stale_session_id(replicas: Replicas) -> None:
    """On a valid peer link, a target naming another session id than the
    agent's live one is refused TARGET_UNAVAILABLE 'stale route'."""
    await agent_on_a(replicas)
    [route] = await routes_on(replicas.b, CLUSTER, "relay-a")
    assert replicas.b.state.peering is not None
    link = await replicas.b.state.peering.links.get(route.address)
    with pytest.raises(StreamRefused) as refused:
        await link.open_stream(peer_target(CLUSTER, route.session_id - 1), timeout=WAIT)
    assert refused.value.code == ErrorCode.TARGET_UNAVAILABLE
    assert refused.value.reason.startswith(STALE_ROUTE), refused.value.reason


@pytest.mark.parametrize("credential", ["none", "other CA"])
async def test_peer_listener_refuses_a_link_without_a_valid_peer_certificate(
        replicas: Replicas, credential: str, caplog: pytest.LogCaptureFixture) -> None:
    """A TLS client trusting relay A's peer CA but presenting no certificate,
    or one from another CA, gets no link; A logs one line saying why."""
    assert replicas.a.relay.config.peering is not None and replicas.a.state.peering is not None
    peering = replicas.a.relay.config.peering
    ctx = ssl.create_default_context(cafile=peering.ca_file)
    ctx.check_hostname = False
    if credential == "other CA":
        stranger = CertificateAuthority.create("stranger").issue_peer("intruder")
        cert, key = write_pem_pair(replicas.tmp / "stranger", "intruder", stranger)
        ctx.load_cert_chain(cert, key)
    caplog.set_level(logging.INFO, logger="relay")
    url = f"https://127.0.0.1:{replicas.a.state.peering.port}{PEER_CONNECT_PATH}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        with pytest.raises((aiohttp.ClientError, OSError)):
            async with asyncio.timeout(WAIT):
                ws = await http.ws_connect(url, **ws_connect_kwargs())
                await ws.receive()
    await until(lambda: [r for r in caplog.records if "edge closed" in r.getMessage()
                         and "tls error" in r.getMessage()], "relay A's refusal line")
    assert replicas.a.state.metrics.sample("arc_relay_peer_links_open", {"direction": "in"}) == 0


async def test_tls_is_end_to_end_across_the_hop(tmp_path: Path) -> None:
    """A TLS client talks through relay B, the peer link and relay A to a TLS
    echo server behind the agent: the marker it sends comes back, and neither
    relay's recorded DATA holds it (the relays carry ciphertext only)."""
    record = tmp_path / "data.bin"
    authority = CertificateAuthority.create("upstream CA")
    server_ctx = server_ssl_context(authority.issue_server(("upstream.test",), ()))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
    async with running_replicas(tmp_path, record_data_file=str(record)) as pair:
        keys = await pair.a.register("rg1", "alpha")
        await pair.a.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
        await pair.a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(upstream)))
        await pair.a.wait_agent(CLUSTER)
        await until_async(lambda: routes_on(pair.b, CLUSTER, "relay-a"), "relay A's route seen by relay B")
        client = await pair.b.client(pair.b.token("demo"))

        async def through_tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await splice(await client.open_stream(CLUSTER.encode(), timeout=WAIT), reader, writer)

        local = await asyncio.start_server(through_tunnel, "127.0.0.1", 0)
        marker = f"PLAINTEXT-MARKER-{os.urandom(8).hex()}".encode() * 64
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server_port(local), ssl=client_ssl_context(authority.certificate_pem),
            server_hostname="upstream.test")
        writer.write(marker)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            assert await reader.readexactly(len(marker)) == marker
        writer.close()
        local.close()
    upstream.close()
    for side in ("a", "b"):
        data = Path(f"{record}.{side}").read_bytes()
        assert len(data) > len(marker), f"relay {side} recorded no DATA: is the hook on?"
        assert marker[:40] not in data


async def test_peer_link_bounds_its_streams_and_links(tmp_path: Path) -> None:
    """With peering.max_streams_per_link 2, a third stream open across the
    link is refused TOO_MANY_STREAMS naming the key (the first two go on);
    with max_links 1, a second peer address gets no link."""
    async with running_replicas(tmp_path, peering_limits={"max_streams_per_link": 2,
                                                          "max_links": 1}) as pair:
        await agent_on_a(pair)
        client = await pair.b.client(pair.b.token("demo"))
        held = [await client.open_stream(CLUSTER.encode(), timeout=WAIT) for _ in range(2)]
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(CLUSTER.encode(), timeout=WAIT)
        assert refused.value.code == ErrorCode.TOO_MANY_STREAMS
        assert "peering.max_streams_per_link" in refused.value.reason, refused.value.reason
        for stream in held:
            await stream.write(b"still")
            assert await stream.readexactly(5) == b"still"
            await stream.aclose()
        assert pair.b.state.peering is not None
        with pytest.raises(PeerUnreachable, match=r"peering\.max_links"):
            await pair.b.state.peering.links.get("127.0.0.1:1")


async def test_relay_config_peering_keys_and_their_errors(tmp_path: Path) -> None:
    """``peering`` from YAML: paths relative to the config file; a missing
    key or an unreadable file is one line naming the key."""
    peers = issue_peer_files(tmp_path / "peers", ["relay-a"])
    config = relay_config_from_dict({"listen": "127.0.0.1:0", "state_dir": str(tmp_path / "relay"),
                                     "peering": {"listen": "127.0.0.1:0", "ca_file": "peers/peer-ca.crt",
                                                 "cert_file": "peers/relay-a.crt",
                                                 "key_file": "peers/relay-a.key", "max_links": 3}},
                                    base_dir=tmp_path)
    assert config.peering == dataclasses.replace(peers["relay-a"], max_links=3)
    with pytest.raises(ConfigError, match=r"peering\.ca_file"):
        relay_config_from_dict({"peering": {"cert_file": "a", "key_file": "b"}}, base_dir=tmp_path)
    broken = dataclasses.replace(config, peering=dataclasses.replace(config.peering, ca_file=str(tmp_path / "no.crt")))
    with pytest.raises(ConfigError) as error:
        await RelayServer(broken).start()
    assert str(error.value).startswith("peering.ca_file ") and "No such file" in str(error.value)
    assert "\n" not in str(error.value)


async def test_remembered_route_to_a_replaced_session_is_looked_up_again(replicas: Replicas) -> None:
    """Relay B remembers the route that worked; the agent then reconnects to
    relay A (a new session id): B's next stream is refused 'stale route' by
    A, B asks presence again and the stream goes to the new session."""
    keys = await agent_on_a(replicas)
    client = await replicas.b.client(replicas.b.token("demo"))
    assert await roundtrip(client, CLUSTER.encode(), b"first") == b"first"
    [old] = await routes_on(replicas.b, CLUSTER, "relay-a")
    echo = await start_echo_server()
    await replicas.a.connectors[0][0].stop()
    await replicas.a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(echo)))

    async def new_route() -> list[Route]:
        return [r for r in await routes_on(replicas.b, CLUSTER, "relay-a") if r.session_id > old.session_id]

    await until_async(new_route, "the new session's route")
    stale_before = replicas.b.state.metrics.sample(
        "arc_relay_streams_forwarded_total", {"direction": "out", "outcome": "stale"}) or 0
    assert await roundtrip(client, CLUSTER.encode(), b"second") == b"second"
    assert replicas.b.state.metrics.sample(
        "arc_relay_streams_forwarded_total", {"direction": "out", "outcome": "stale"}) == stale_before + 1
    assert replicas.a.state.metrics.sample(
        "arc_relay_streams_forwarded_total", {"direction": "in", "outcome": "stale"}) == 1
    echo.close()


async def test_stream_on_a_draining_local_session_goes_to_the_agents_new_replica(
        replicas: Replicas) -> None:
    """The agent's session on relay B is going away (GOAWAY, as in a drain)
    and its new session is on relay A: a stream opened on B is forwarded to A
    at once instead of waiting for a new local session."""
    echo = await start_echo_server()
    keys = await replicas.b.register("rg1", "alpha")
    await replicas.b.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    # A bare agent session on B (it never redials: a redial would win the race).
    url = agent_endpoint_url(replicas.b.relay.url)
    ws = await replicas.b.http.ws_connect(url, headers={
        "Authorization": f"Bearer {sign_agent_assertion(keys.private_key_pem, CLUSTER, url)}"},
        **ws_connect_kwargs())
    bare = TunnelSession(ws, is_client=True, name="bare-agent")
    bare_task = asyncio.ensure_future(bare.run())
    local = await replicas.b.wait_agent(CLUSTER)
    await replicas.a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(echo)))
    await replicas.a.wait_agent(CLUSTER)
    await until_async(lambda: routes_on(replicas.b, CLUSTER, "relay-a"), "relay A's route seen by relay B")
    await local.goaway()
    assert replicas.b.state.directory.get(CLUSTER) is local
    client = await replicas.b.client(replicas.b.token("demo"))
    assert await roundtrip(client, CLUSTER.encode(), b"moved") == b"moved"
    assert replicas.b.state.metrics.sample("arc_relay_streams_forwarded_total",
                                           {"direction": "out", "outcome": "forwarded"}) == 1
    await bare.close()
    await bare_task
    echo.close()
