"""A relay, the sandbox OIDC issuer, agents and clients on loopback, for tests.

Everything is real: TLS sockets on 127.0.0.1, tokens signed by the sandbox
issuer, assertions signed with per-cluster keys, tunnel sessions over
websockets. ``relay_env`` is the pytest fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.connector import Connector, ConnectorConfig
from certs import KeyPair, client_ssl_context, generate_key_pair
from relay import Cluster, IssuerConfig, RelayConfig, RelayServer
from relay.roles import RoleAssignment
from sandbox.idp import SandboxIdp
from tests.support.waits import WAIT
from tunnel import TunnelSession, ws_connect_kwargs

DEMO_OID = "35233192-fc5d-4d88-83c8-36ab5ca99ad9"   # demo@contoso.example (developers)
BOB_OID = "7a338408-e16c-4e47-9de2-1202ff0e1eaa"    # bob@contoso.example (viewers)
ADMIN_OID = "72456920-99c3-4dff-ae71-fa469274d15a"  # admin@contoso.example
VIEWERS_GROUP = "96214857-9d36-4dff-b3b1-4f6f28cf474b"

@dataclass
class RelayEnv:
    """One relay plus the sandbox issuer; helpers for agents and clients."""

    tmp: Path
    idp: SandboxIdp
    relay: RelayServer
    http: aiohttp.ClientSession
    connectors: list[tuple[Connector, asyncio.Task[None]]] = field(default_factory=list)
    clients: list[tuple[TunnelSession, asyncio.Task[None]]] = field(default_factory=list)

    @classmethod
    async def start(cls, tmp: Path, **overrides: Any) -> RelayEnv:
        idp = SandboxIdp(tmp / "idp")
        await idp.start()
        # extra_issuers: trusted beside the sandbox issuer (whose alias and
        # admins are then alias= and issuer_admins=; top-level admins need one issuer).
        extra: tuple[IssuerConfig, ...] = overrides.pop("extra_issuers", ())
        first = IssuerConfig(idp.issuer, ("api://cluster-connect",), idp.ca_file,
                             alias=overrides.pop("alias", None),
                             admins=overrides.pop("issuer_admins", (ADMIN_OID,) if extra else ()))
        config = RelayConfig(
            host="127.0.0.1",
            port=overrides.pop("port", 0),
            state_dir=str(tmp / "relay"),
            issuers=(first, *extra),
            admins=overrides.pop("admins", () if extra else (ADMIN_OID,)),
            agent_grace_seconds=overrides.pop("agent_grace_seconds", 1.0),
            drain_seconds=overrides.pop("drain_seconds", 2.0),
            **overrides,
        )
        relay = RelayServer(config)
        await relay.start()
        assert relay.ca_pem is not None
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(relay.ca_pem)))
        return cls(tmp, idp, relay, http)

    @property
    def state(self) -> Any:
        assert self.relay.state is not None
        return self.relay.state

    def token(self, user: str = "demo", **claims: Any) -> str:
        return self.idp.mint(user, **claims)

    async def api(self, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
        """Call the management API; returns (status, parsed JSON or None)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.relay.url + path, json=body, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, (await resp.json(content_type=None)) if text else None
            except ValueError:
                return resp.status, text

    async def register(self, rg: str, name: str, keys: KeyPair | None = None) -> KeyPair:
        """Register a cluster directly in the registry; returns its agent keys."""
        keys = keys or generate_key_pair(f"{rg}/{name}")
        await self.state.registry.put(Cluster(name=name, resource_group=rg,
                                        agent_public_key_certificate=keys.certificate_pem.decode()))
        return keys

    async def grant(self, principal: str, role: str, scope: str) -> None:
        aid = hashlib.sha256(f"{principal}{role}{scope}".encode()).hexdigest()[:16]
        await self.state.roles.put(RoleAssignment(aid, principal, "User", role, scope,
                                                  principal_issuer=self.idp.issuer))

    async def start_agent(self, cluster_id: str, keys: KeyPair, upstream: tuple[str, int],
                          *, relay_url: str | None = None, **options: Any) -> Connector:
        connector = Connector(ConnectorConfig(
            relay_url=relay_url or self.relay.url, cluster_id=cluster_id,
            private_key_pem=keys.private_key_pem, upstream=upstream,
            **{"relay_ca_pem": self.relay.ca_pem, **options},
        ))
        task = asyncio.ensure_future(connector.run())
        self.connectors.append((connector, task))
        return connector

    async def wait_agent(self, cluster_id: str, *, not_this: Any = None) -> Any:
        """The relay-side live session of ``cluster_id`` (bounded wait)."""
        session = await self.state.directory.wait_for(cluster_id, WAIT, not_this=not_this)
        assert session is not None, f"agent of {cluster_id} never connected"
        return session

    async def client(self, token: str) -> TunnelSession:
        """A client tunnel session (what arc-proxy holds), already running."""
        ws = await self.http.ws_connect(self.relay.url + "/client/v1/connect",
                                        headers={"Authorization": f"Bearer {token}"},
                                        **ws_connect_kwargs())
        session = TunnelSession(ws, is_client=True, name="test-client")
        self.clients.append((session, asyncio.ensure_future(session.run())))
        return session

    async def restart_relay(self) -> None:
        """Stop the relay and start a new one on the same port and state."""
        port = self.relay.port
        await self.relay.stop()
        self.relay = RelayServer(dataclasses.replace(self.relay.config, port=port))
        await self.relay.start()

    async def close(self) -> None:
        for session, task in self.clients:
            with contextlib.suppress(Exception):
                await session.close()
            task.cancel()
        async def stop(connector: Connector, task: asyncio.Task[None]) -> None:
            await connector.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, WAIT)

        # Concurrently: each agent drains its session before it returns.
        await asyncio.gather(*(stop(c, t) for c, t in self.connectors))
        await self.relay.stop(drain_seconds=0.5)
        await self.http.close()
        await self.idp.stop()


async def roundtrip(session: TunnelSession, target: bytes, payload: bytes) -> bytes:
    """Open ``target``, send ``payload`` then FIN, and read everything back."""
    stream = await session.open_stream(target, timeout=WAIT)

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(payload), 65536):
            await stream.write(view[i:i + 65536])
        await stream.write_eof()

    sender = asyncio.ensure_future(send())
    received = bytearray()
    async with asyncio.timeout(WAIT * 3):
        while data := await stream.read():
            received += data
        await sender
    await stream.aclose()
    return bytes(received)


@contextlib.asynccontextmanager
async def running_env(tmp_path: Path, **overrides: Any) -> AsyncIterator[RelayEnv]:
    """A started relay + sandbox issuer, torn down on exit (``relay_env`` in
    ``tests/conftest.py`` wraps it; a module needing other limits calls it itself)."""
    env = await RelayEnv.start(tmp_path, **overrides)
    try:
        yield env
    finally:
        await env.close()
