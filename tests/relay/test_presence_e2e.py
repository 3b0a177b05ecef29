"""arc-relay as a process with ``presence.redis_url``: an agent's session is a
route in a real Redis under the relay's replica id, gone when the agent
leaves, and lapsing within the TTL when the relay is killed with -9."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml

from agent.connector import Connector, ConnectorConfig
from certs import CertificateAuthority, client_ssl_context, generate_key_pair
from relay.presence_redis import presence_key
from sandbox.idp import SandboxIdp
from tests.support.processes import ChildProcess
from tests.support.redis import RedisServer, running_redis
from tests.support.relay import ADMIN_OID
from tests.support.waits import WAIT, until_async

pytestmark = pytest.mark.e2e

TTL = 1.5
REPLICA = "relay-e2e-0"


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server on a unix socket under tmp_path (skips when not installed)."""
    async for server in running_redis(tmp_path / "redis"):
        yield server


async def _route(client: aioredis.Redis, cluster: str) -> str:
    """This relay's route of ``cluster`` in Redis ("" when there is none)."""
    value = await client.hget(presence_key(cluster), REPLICA)
    return str(value) if value is not None else ""


async def test_relay_registers_agent_route_in_redis_and_it_lapses_after_kill_9(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Agent connects -> its route is in Redis with the relay's replica id and
    advertise address; agent disconnects -> gone; agent back, relay killed -9
    -> the route expires within the TTL."""
    idp = SandboxIdp(tmp_path / "idp")
    await idp.start()
    state_dir = tmp_path / "relay"
    config_file = tmp_path / "relay.yaml"
    config_file.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0", "state_dir": str(state_dir),
        "oidc": {"issuers": [{"issuer": idp.issuer, "audiences": ["api://cluster-connect"],
                              "ca_file": str(idp.ca_file)}]},
        "admins": [ADMIN_OID],
        "presence": {"redis_url": redis_server.url, "ttl_seconds": TTL, "replica_id": REPLICA,
                     "advertise": "relay-0.relay.test:8443"}}))
    relay = await ChildProcess.start_async([sys.executable, "-m", "relay.cli", "--config", str(config_file)],
                                           ready="arc-relay: serving ", name="arc-relay")
    relay_url = f"https://127.0.0.1:{relay.port}"
    ca_pem = (state_dir / "tls" / "ca.crt").read_bytes()
    keys = generate_key_pair("rg1/alpha")
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(ca_pem)))
    client = redis_server.client()
    connectors: list[tuple[Connector, asyncio.Task[None]]] = []

    def start_agent() -> Connector:
        connector = Connector(ConnectorConfig(relay_url=relay_url, cluster_id="rg1/alpha",
                                              private_key_pem=keys.private_key_pem,
                                              upstream=("127.0.0.1", 9), relay_ca_pem=ca_pem))
        connectors.append((connector, asyncio.ensure_future(connector.run())))
        return connector

    try:
        async with http.put(f"{relay_url}/api/v1/resourceGroups/rg1/clusters/alpha",
                            headers={"Authorization": f"Bearer {idp.mint('admin')}"}, json={
                "agentPublicKeyCertificate": keys.certificate_pem.decode(),
                "servingCaCertificate": CertificateAuthority.create("alpha CA").certificate_pem.decode(),
                "tlsServerName": "kube-aad-proxy.alpha"}) as resp:
            assert resp.status in (200, 201), await resp.text()

        agent = start_agent()
        assert await agent.wait_connected(WAIT)
        route = await until_async(lambda: _route(client, "rg1/alpha"), "the agent's route in Redis")
        session_id, _, address = route.split(" ", 2)
        assert int(session_id) > 0 and address == "relay-0.relay.test:8443", route

        await agent.stop()
        await asyncio.wait_for(connectors[-1][1], WAIT)
        await until_async(lambda: _gone(client, "rg1/alpha"), "the route removed on disconnect")

        agent = start_agent()
        assert await agent.wait_connected(WAIT)
        second = await until_async(lambda: _route(client, "rg1/alpha"), "the route of the new session")
        assert int(second.split(" ", 1)[0]) > int(session_id)
        relay.kill()
        killed = asyncio.get_running_loop().time()
        # Redis drops the key at most one TTL after the last refresh; polling adds little.
        await until_async(lambda: _gone(client, "rg1/alpha"), "the dead relay's route to expire",
                          timeout=TTL + 1.0)
        print(f"route gone {asyncio.get_running_loop().time() - killed:.2f} s after kill -9 (TTL {TTL} s)")
    finally:
        await asyncio.to_thread(relay.stop)
        for connector, task in connectors:
            await connector.stop()
            await asyncio.wait_for(task, WAIT)
        await client.aclose()
        await http.close()
        await idp.stop()


async def _gone(client: aioredis.Redis, cluster: str) -> bool:
    return await client.exists(presence_key(cluster)) == 0
