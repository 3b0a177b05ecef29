"""Two relay replicas in this process: one database, one real redis-server for
presence, peer links with mutual TLS (certificates from ``issue_peer_files``),
the same sandbox issuer and development CA. ``replicas.a`` and ``replicas.b``
are ``RelayEnv`` objects sharing the issuer and the HTTP session."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay import RelayServer
from relay.peering import issue_peer_files
from relay.presence import PresenceConfig
from tests.support.redis import RedisServer, running_redis
from tests.support.relay import RelayEnv
from tests.support.waits import WAIT

# Short: a killed replica's routes lapse quickly in tests.
TTL = 1.5


@dataclass
class Replicas:
    """Relays ``a`` and ``b`` (each a ``RelayEnv``) and their Redis."""

    a: RelayEnv
    b: RelayEnv
    redis: RedisServer
    tmp: Path

    async def stop_a(self) -> None:
        """Stop relay A (its agents' sessions end; its routes go)."""
        await self.a.relay.stop(drain_seconds=0)


async def _replica(env: RelayEnv, tmp: Path, name: str, **overrides: Any) -> RelayEnv:
    relay = RelayServer(dataclasses.replace(env.relay.config, port=0, **overrides))
    await relay.start()
    return RelayEnv(tmp, env.idp, relay, env.http)


@contextlib.asynccontextmanager
async def running_replicas(tmp_path: Path, **overrides: Any) -> AsyncIterator[Replicas]:
    """Relays A and B sharing a SQLite file, a redis-server and a peer CA;
    ``overrides`` go to both ``RelayConfig``s (``record_data_file``: a file per relay, suffixed;
    ``peering_limits``: fields of both ``PeeringConfig``s)."""
    async for redis in running_redis(tmp_path / "redis"):
        limits = overrides.pop("peering_limits", {})
        peers = {name: dataclasses.replace(config, **limits) for name, config in
                 issue_peer_files(tmp_path / "peers", ["relay-a", "relay-b"]).items()}
        record = overrides.pop("record_data_file", None)

        def presence(name: str, url: str = redis.url) -> PresenceConfig:
            return PresenceConfig(redis_url=url, ttl_seconds=TTL, replica_id=name)

        a = await RelayEnv.start(tmp_path, presence=presence("relay-a"), peering=peers["relay-a"],
                                 record_data_file=f"{record}.a" if record else None, **overrides)
        b: RelayEnv | None = None
        try:
            b = await _replica(a, tmp_path, "relay-b", presence=presence("relay-b"),
                               peering=peers["relay-b"],
                               record_data_file=f"{record}.b" if record else None)
            yield Replicas(a, b, redis, tmp_path)
        finally:
            if b is not None:
                for session, task in b.clients:
                    with contextlib.suppress(Exception):
                        await session.close()
                    task.cancel()
                for connector, task in b.connectors:
                    await connector.stop()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, WAIT)
                await b.relay.stop(drain_seconds=0.5)
            await a.close()
