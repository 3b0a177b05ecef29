"""What the relay does per agent connect that costs CPU for nothing, and doesn't.

No TLS 1.3 session tickets (no client of the relay can resume through aiohttp's
public API; making and sending two per handshake was ~15 % of its TLS CPU),
and a registered certificate's fingerprint computed once per PEM, bounded.
"""

from __future__ import annotations

import asyncio
import ssl

from certs import client_ssl_context
from relay import agent_endpoint
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
    keys = relay_env.register("rg1", "alpha")
    agent_endpoint._fingerprint.cache_clear()
    previous = None
    for _ in range(2):
        connector = await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9))
        previous = await relay_env.wait_agent("rg1/alpha", not_this=previous)
        await connector.stop()
    info = agent_endpoint._fingerprint.cache_info()
    assert info.misses == 1 and info.hits >= 3
