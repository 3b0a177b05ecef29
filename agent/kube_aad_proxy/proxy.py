"""kube-aad-proxy: the TLS listener kubectl's bytes arrive at (through the agent)."""

from __future__ import annotations

import asyncio
import logging
import time

from agent.kube_aad_proxy.config import (
    SSL_HANDSHAKE_TIMEOUT,
    WRITE_HIGH_WATER,
    WRITE_LOW_WATER,
    KubeAadProxyConfig,
)
from agent.kube_aad_proxy.connection import ProxyConnection
from agent.kube_aad_proxy.names import NameMapper
from agent.kube_aad_proxy.oidc import OidcGate, audiences_of, issuers_of
from agent.kube_aad_proxy.policy import HeaderPolicy
from agent.kube_aad_proxy.upstream import upstream_ssl_context
from certs import server_ssl_context

log = logging.getLogger("agent.kube_aad_proxy")


class KubeAadProxy:
    """Terminates kubectl's TLS, applies the header policy, forwards to the API server.

    Call :meth:`start`, read :attr:`port`, and :meth:`stop` when done.

    Args:
        config: See :class:`KubeAadProxyConfig`.

    Raises:
        ValueError: A validator is configured but no trusted issuer is known.
    """

    def __init__(self, config: KubeAadProxyConfig) -> None:
        self.config = config
        gate = None
        if config.validator is not None:
            issuers = config.trusted_issuers if config.trusted_issuers is not None else issuers_of(config.validator)
            if not issuers:
                raise ValueError("validator has no trusted issuers; pass trusted_issuers")
            gate = OidcGate(config.validator, issuers, audiences_of(config.validator))
        self.gate = gate
        self.policy = HeaderPolicy(gate, config.upstream_token, config.impersonate_with,
                                   NameMapper(config.name_prefixes))
        self.upstream_ssl = upstream_ssl_context(config)
        self.write_high = WRITE_HIGH_WATER
        self.write_low = WRITE_LOW_WATER
        self.connections: set[ProxyConnection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The listening TCP port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("kube-aad-proxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port) with the serving certificate.

        ALPN offers only ``http/1.1``, so kubectl never negotiates HTTP/2 (whose
        lack of upgrades would break exec and port-forward).

        Raises:
            OSError: The address cannot be bound.
        """
        ctx = server_ssl_context(self.config.serving_cert, alpn=["http/1.1"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ProxyConnection(self),
            host,
            port,
            ssl=ctx,
            ssl_handshake_timeout=SSL_HANDSHAKE_TIMEOUT,
            reuse_address=True,
        )
        self._sweeper = loop.create_task(self._sweep())
        log.info("listening host=%s port=%d upstream=%s oidc=%s",
                 host, self.port, self.config.upstream_url, self.gate is not None)

    async def stop(self) -> None:
        """Stop listening and close every open connection (both sides)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except TimeoutError:
            log.warning("connections still closing at stop")
        log.info("stopped")

    async def _sweep(self) -> None:
        """Apply head and idle timeouts; one timer for all connections, not one each."""
        interval = max(0.05, min(10.0, self.config.head_timeout / 2, self.config.idle_timeout / 2))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)
