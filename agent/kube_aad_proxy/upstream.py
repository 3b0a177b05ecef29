"""The TLS connection from kube-aad-proxy to the API server (one per kubectl
connection, opened on its first request)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol

from agent.kube_aad_proxy.config import WRITE_HIGH_WATER, WRITE_LOW_WATER, KubeAadProxyConfig
from certs import client_ssl_context


class UpstreamOwner(Protocol):
    """What the downstream side provides to its upstream connection."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...


def upstream_ssl_context(config: KubeAadProxyConfig) -> ssl.SSLContext:
    """Verifies the API server against ``upstream_ca_pem``; HTTP/1.1 only, as
    upgrades (exec, port-forward, attach) do not exist in HTTP/2."""
    ctx = client_ssl_context(config.upstream_ca_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class UpstreamProtocol(asyncio.Protocol):
    """Hands everything to its owner; owns only the transport."""

    def __init__(self, owner: UpstreamOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)

    def data_received(self, data: bytes) -> None:
        self.owner.upstream_data(data)

    def eof_received(self) -> bool:
        return False  # TLS cannot half-close in asyncio; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.owner.upstream_writable(False)

    def resume_writing(self) -> None:
        self.owner.upstream_writable(True)


async def open_upstream(config: KubeAadProxyConfig, ctx: ssl.SSLContext, owner: UpstreamOwner) -> UpstreamProtocol:
    """Connect and complete the TLS handshake.

    Raises:
        OSError, ssl.SSLError, TimeoutError: The API server is unreachable or
            its certificate does not verify.
    """
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            lambda: UpstreamProtocol(owner),
            config.upstream_host,
            config.upstream_port,
            ssl=ctx,
            server_hostname=config.upstream_host,
            ssl_handshake_timeout=config.upstream_connect_timeout,
        ),
        config.upstream_connect_timeout,
    )
    return proto
