"""Forwarding between two ``arc-relay`` processes (config files with
``peering`` and ``presence.redis_url``, a real redis-server): an agent on
relay A serves a client of relay B; after ``kill -9`` of A, whose route stays
in Redis until its expiry, B answers "offline" within the agent grace (no
hang), and the agent's next session, on B, serves again."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from agent.connector import Connector, ConnectorConfig
from certs import CertificateAuthority, client_ssl_context, generate_key_pair
from relay.peering import issue_peer_files
from relay.presence_redis import presence_key
from sandbox.idp import SandboxIdp
from tests.support.processes import ChildProcess
from tests.support.redis import RedisServer, running_redis
from tests.support.relay import ADMIN_OID, roundtrip
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, until_async
from tunnel import ErrorCode, StreamRefused, TunnelSession, ws_connect_kwargs

pytestmark = pytest.mark.e2e

CLUSTER = "rg1/alpha"
GRACE = 0.5


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async for server in running_redis(tmp_path / "redis"):
        yield server


async def test_agent_on_killed_relay_a_then_on_b_serves_a_client_of_b(
        tmp_path: Path, redis_server: RedisServer) -> None:
    idp = SandboxIdp(tmp_path / "idp")
    await idp.start()
    peers = issue_peer_files(tmp_path / "peers", ["relay-a", "relay-b"])
    state_dir = tmp_path / "relay"
    relays: dict[str, ChildProcess] = {}
    for name in ("relay-a", "relay-b"):  # A first: it makes the shared dev CA
        peer = peers[name]
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({
            "listen": "127.0.0.1:0", "state_dir": str(state_dir),
            "oidc": {"issuers": [{"issuer": idp.issuer, "audiences": ["api://cluster-connect"],
                                  "ca_file": str(idp.ca_file)}]},
            "admins": [ADMIN_OID],
            "limits": {"agent_grace_seconds": GRACE},
            "presence": {"redis_url": redis_server.url, "ttl_seconds": 30, "replica_id": name},
            "peering": {"listen": "127.0.0.1:0", "ca_file": peer.ca_file, "cert_file": peer.cert_file,
                        "key_file": peer.key_file, "dial_timeout_seconds": 1}}))
        relays[name] = await ChildProcess.start_async(
            [sys.executable, "-m", "relay.cli", "--config", str(config)],
            ready="arc-relay: serving ", name=name)
    url_a, url_b = (f"https://127.0.0.1:{relays[n].port}" for n in ("relay-a", "relay-b"))
    ca_pem = (state_dir / "tls" / "ca.crt").read_bytes()
    keys = generate_key_pair(CLUSTER)
    echo = await start_echo_server()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(ca_pem)))
    redis = redis_server.client()
    connectors: list[tuple[Connector, asyncio.Task[None]]] = []

    def start_agent(relay_url: str) -> Connector:
        connector = Connector(ConnectorConfig(relay_url=relay_url, cluster_id=CLUSTER,
                                              private_key_pem=keys.private_key_pem,
                                              upstream=("127.0.0.1", server_port(echo)),
                                              relay_ca_pem=ca_pem))
        connectors.append((connector, asyncio.ensure_future(connector.run())))
        return connector

    client: TunnelSession | None = None
    client_task: asyncio.Task[None] | None = None
    try:
        async with http.put(f"{url_a}/api/v1/resourceGroups/rg1/clusters/alpha",
                            headers={"Authorization": f"Bearer {idp.mint('admin')}"}, json={
                "agentPublicKeyCertificate": keys.certificate_pem.decode(),
                "servingCaCertificate": CertificateAuthority.create("alpha CA").certificate_pem.decode(),
                "tlsServerName": "kube-aad-proxy.alpha"}) as resp:
            assert resp.status in (200, 201), await resp.text()
        agent = start_agent(url_a)
        assert await agent.wait_connected(WAIT)

        async def route_of(replica: str) -> str:
            value = await redis.hget(presence_key(CLUSTER), replica)
            return str(value) if value is not None else ""

        await until_async(lambda: route_of("relay-a"), "relay A's route in Redis")
        ws = await http.ws_connect(f"{url_b}/client/v1/connect",
                                   headers={"Authorization": f"Bearer {idp.mint('admin')}"},
                                   **ws_connect_kwargs())
        client = TunnelSession(ws, is_client=True, name="test-client")
        client_task = asyncio.ensure_future(client.run())
        assert await roundtrip(client, CLUSTER.encode(), b"via A") == b"via A"

        relays["relay-a"].kill()
        await agent.stop()
        assert await route_of("relay-a"), "the killed relay's route should outlive it (TTL 30 s)"
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(CLUSTER.encode(), timeout=WAIT)
        took = loop.time() - started
        assert refused.value.code == ErrorCode.TARGET_UNAVAILABLE and "offline" in refused.value.reason
        print(f"'offline' {took:.2f} s after the OPEN with relay A killed (agent grace {GRACE} s)")

        agent = start_agent(url_b)
        assert await agent.wait_connected(WAIT)
        assert await roundtrip(client, CLUSTER.encode(), b"via B") == b"via B"
        assert not [line for line in relays["relay-b"].err.tail(200) if "Traceback" in line]
    finally:
        if client is not None:
            await client.close()
        if client_task is not None:
            client_task.cancel()
        for connector, task in connectors:
            await connector.stop()
            await asyncio.wait_for(task, WAIT)
        for relay in relays.values():
            await asyncio.to_thread(relay.stop)
        await redis.aclose()
        await http.close()
        echo.close()
        await idp.stop()
