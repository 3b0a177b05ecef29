"""What the relay does per agent connect that costs CPU for nothing, and doesn't.

No TLS 1.3 session tickets (no client of the relay can resume through aiohttp's
public API; making and sending two per handshake was ~15 % of its TLS CPU),
a registered certificate's fingerprint computed once per PEM, bounded, and
its certificate read from the store once per connect (a bounded cache that a
key change through the registry clears, and that expires).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from certs import client_ssl_context, generate_key_pair
from relay import agent_endpoint, status
from relay.registry import Cluster, SqliteDatabase, SqliteRegistry
from relay.status import LiveStatusRegistry
from tests.support.relay import RelayEnv
from tests.support.waits import WAIT


async def test_relay_sends_no_tls_session_tickets(relay_env: RelayEnv) -> None:
    """A TLS 1.3 client that completed a request holds no session ticket
    from the relay (it would have received two by default)."""
    assert relay_env.relay.ca_pem is not None
    ctx = client_ssl_context(relay_env.relay.ca_pem)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_env.relay.port, ssl=ctx,
                                                       server_hostname="127.0.0.1")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        response = await reader.read()
    tls = writer.get_extra_info("ssl_object")
    assert response.startswith(b"HTTP/1.1 200")
    assert tls.version() == "TLSv1.3"
    assert tls.session is not None and not tls.session.has_ticket
    writer.close()


async def test_relay_fingerprints_a_registered_certificate_once(relay_env: RelayEnv) -> None:
    """Two connects of one agent compute its certificate's fingerprint once
    (the handshake and the post-upgrade check share it); the cache is bounded."""
    info = agent_endpoint._fingerprint.cache_info()
    assert info.maxsize == agent_endpoint.MAX_CACHED_FINGERPRINTS
    keys = await relay_env.register("rg1", "alpha")
    agent_endpoint._fingerprint.cache_clear()
    previous = None
    for _ in range(2):
        connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9))
        previous = await relay_env.wait_agent("rg1/alpha", not_this=previous)
        await connector.stop()
    info = agent_endpoint._fingerprint.cache_info()
    assert info.misses == 1 and info.hits >= 3


async def test_relay_reads_an_agents_certificate_from_the_store_once_per_connect(relay_env: RelayEnv) -> None:
    """The assertion check and the post-upgrade key check of one connect share
    one store read (the whole row is never read on the connect path)."""
    keys = await relay_env.register("rg1", "alpha")
    registry = relay_env.state.registry
    assert isinstance(registry, LiveStatusRegistry)
    reads: list[str] = []
    real_read = registry.store.agent_certificate

    async def counted(cid: str) -> str | None:
        reads.append(cid)
        return await real_read(cid)

    registry.store.agent_certificate = counted  # type: ignore[method-assign,assignment]
    registry.store.get = None  # type: ignore[assignment,method-assign]  # the connect path must not call it
    connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9))
    await relay_env.wait_agent("rg1/alpha")
    await connector.stop()
    assert reads == ["rg1/alpha"]


def _registry(tmp_path: Path) -> tuple[LiveStatusRegistry, SqliteRegistry]:
    store = SqliteRegistry(SqliteDatabase(tmp_path / "relay.db"))
    return LiveStatusRegistry(store, lambda cid: False), store


def _cluster(name: str, pem: bytes) -> Cluster:
    return Cluster(name=name, resource_group="rg1", agent_public_key_certificate=pem.decode())


async def test_certificate_cache_drops_a_key_changed_or_deleted_through_it(tmp_path: Path) -> None:
    """A key put or a cluster deleted through the registry is seen by the very
    next connect, whatever the cache held."""
    registry, _ = _registry(tmp_path)
    old, new = generate_key_pair("rg1/a").certificate_pem, generate_key_pair("rg1/a").certificate_pem
    await registry.put(_cluster("a", old))
    assert await registry.agent_certificate("rg1/a") == old.decode()
    await registry.put(_cluster("a", new))
    assert await registry.agent_certificate("rg1/a") == new.decode()
    assert await registry.delete("rg1/a")
    assert await registry.agent_certificate("rg1/a") is None


async def test_certificate_cache_rereads_after_its_ttl_and_is_bounded(tmp_path: Path) -> None:
    """A key changed behind the registry's back (another replica, an edit of
    the file) is seen once the entry is AGENT_CERTIFICATE_TTL old; unknown
    clusters are not cached; the cache never holds more than its bound."""
    registry, store = _registry(tmp_path)
    now = [100.0]
    registry.clock = lambda: now[0]
    old, new = generate_key_pair("rg1/a").certificate_pem, generate_key_pair("rg1/a").certificate_pem
    await store.put(_cluster("a", old))
    assert await registry.agent_certificate("rg1/a") == old.decode()
    await store.put(_cluster("a", new))  # not through the cache
    now[0] += status.AGENT_CERTIFICATE_TTL / 2
    assert await registry.agent_certificate("rg1/a") == old.decode()
    now[0] += status.AGENT_CERTIFICATE_TTL
    assert await registry.agent_certificate("rg1/a") == new.decode()
    assert await registry.agent_certificate("rg1/nobody") is None
    assert "rg1/nobody" not in registry._certificates
    bound = 3
    original, status.MAX_CACHED_AGENT_CERTIFICATES = status.MAX_CACHED_AGENT_CERTIFICATES, bound
    try:
        for i in range(bound + 2):
            await store.put(_cluster(f"b{i}", old))
            await registry.agent_certificate(f"rg1/b{i}")
        assert len(registry._certificates) == bound
    finally:
        status.MAX_CACHED_AGENT_CERTIFICATES = original
