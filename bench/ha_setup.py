"""What ``bench.ha`` stands on: the demo with a relay tier, the bench's
clusters, the simulated agents, arc-proxy in-process, and a view of presence.

The demo (``DemoEnvironment(replicas=3)``: sandbox API server and OIDC issuer,
Redis, PostgreSQL, three ``arc-relay`` processes, HAProxy, a real
``arc-agent`` with kube-aad-proxy for cluster ``default/demo``) is started as
``arcctl demo --replicas 3`` starts it. The bench then registers its own
clusters through the management API as the demo's admin: ``bench/a<i>`` for
the simulated agents (bench/scale_agents.py workers dialling HAProxy) and
``bench/echo-<i>`` for real ``Connector`` agents piping to a TCP echo server
(the forward streams). All bench clusters share one agent key pair: each
session still authenticates with its own signed assertion naming its cluster,
and the setup does not spend a minute generating keys.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agent.connector import Connector, ConnectorConfig
from certs import generate_key_pair
from client.auth import TokenSource
from client.relay_client import RelayApi
from demo.environment import DemoEnvironment
from relay.presence_redis import KEY_PREFIX
from tests.support.servers import server_port, start_echo_server

__all__ = ["BENCH_GROUP", "Presence", "cluster_ssl_context", "register_clusters", "start_echo_agents"]

BENCH_GROUP = "bench"
REGISTER_CONCURRENCY = 8
# The echo agents get this long to close their sessions at the end.
STOP_TIMEOUT = 10.0


def cluster_ssl_context(env: DemoEnvironment) -> ssl.SSLContext:
    """TLS to kube-aad-proxy: trust the demo cluster's serving certificate
    itself (its CA is only pinned, not written out); it names 127.0.0.1."""
    ctx = ssl.create_default_context(cafile=str(env.dir / "agent" / "serving.crt"))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


async def register_clusters(env: DemoEnvironment, names: list[str]) -> bytes:
    """Register ``bench/<name>`` for each name (one shared agent key) and give
    the demo user cluster-user on the bench group.

    Returns:
        The agents' private key (PEM).
    """
    keys = generate_key_pair(f"{BENCH_GROUP} agents")
    cfg = env.admin_config()
    slots = asyncio.Semaphore(REGISTER_CONCURRENCY)
    async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
        async def put(name: str) -> None:
            async with slots:
                await api.put_cluster(BENCH_GROUP, name, {
                    "location": "local", "agentPublicKeyCertificate": keys.certificate_pem.decode()})
        await asyncio.gather(*(put(name) for name in names))
        await api.put_role_assignment("bench-ha-demo-user", {
            "principalId": env.identity.user_oid, "principalType": "User",
            "role": "cluster-user", "scope": f"/resourceGroups/{BENCH_GROUP}"})
    return keys.private_key_pem


@dataclass
class EchoAgents:
    """Real connectors (``arc-agent``'s dial loop) for the echo clusters."""

    server: asyncio.Server
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    connectors: list[Connector] = field(default_factory=list)

    async def stop(self) -> None:
        for connector in self.connectors:
            await connector.stop()
        if self.tasks:  # run() closes its sessions and HTTP client after stop()
            await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.server.close()


async def start_echo_agents(env: DemoEnvironment, clusters: list[str], key_pem: bytes) -> EchoAgents:
    """One connector per cluster, dialling HAProxy, piping streams to an echo server."""
    echo = EchoAgents(await start_echo_server())
    ca_pem = (env.dir / "relay" / "ca.crt").read_bytes()
    for cluster in clusters:
        connector = Connector(ConnectorConfig(relay_url=env.relay_url, cluster_id=cluster, private_key_pem=key_pem,
                                              upstream=("127.0.0.1", server_port(echo.server)), relay_ca_pem=ca_pem))
        echo.connectors.append(connector)
        echo.tasks.append(asyncio.ensure_future(connector.run()))
    return echo


@dataclass
class Presence:
    """Reads every cluster's live routes from Redis (the format is
    relay/presence_redis.py's: one hash per cluster, a field per replica,
    value ``"<session id> <expiry, Redis ms> <address>"``)."""

    redis_url: str
    routes: dict[str, set[str]] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        self._client = aioredis.from_url(self.redis_url, decode_responses=True)

    async def read(self) -> dict[str, set[str]] | None:
        """Cluster id -> replicas with an unexpired route; None if Redis did not answer."""
        try:
            seconds, micros = await self._client.time()
            now_ms = seconds * 1000 + micros // 1000
            keys = [key async for key in self._client.scan_iter(match=KEY_PREFIX + "*", count=1000)]
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            hashes = await pipe.execute()
        except (RedisError, OSError):
            self.errors += 1
            return None
        routes: dict[str, set[str]] = {}
        for key, fields in zip(keys, hashes, strict=True):
            live = {replica for replica, value in fields.items()
                    if len(parts := value.split()) >= 2 and parts[1].isdigit() and int(parts[1]) > now_ms}
            if live:
                routes[key[len(KEY_PREFIX):]] = live
        self.routes = routes
        return routes

    async def wait_all(self, clusters: set[str], timeout: float, poll: float = 0.1) -> float | None:
        """Until every cluster in ``clusters`` has a live route; seconds, or None."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            routes = await self.read()
            if routes is not None and all(routes.get(c) for c in clusters):
                return time.monotonic() - started
            await asyncio.sleep(poll)
        return None

    async def close(self) -> None:
        await self._client.aclose()


def bench_names(agents: int, forwards: int) -> tuple[list[str], list[str]]:
    """Names of the simulated agents' clusters and of the echo clusters."""
    return [f"a{i:04d}" for i in range(agents)], [f"echo-{i}" for i in range(forwards)]


def state_dir(work: Path) -> Path:
    return work / "demo"
