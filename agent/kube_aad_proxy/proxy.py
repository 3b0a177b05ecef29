"""kube-aad-proxy: the TLS listener kubectl's bytes arrive at (through the agent).

Slow-loris guards. The socket is plain TCP; :class:`TlsAcceptor` takes a
pre-authentication slot at accept (none left: the connection is closed at
once, one log line per burst) and runs the TLS handshake with ``start_tls``
(bounded by ``tls_handshake_timeout``). The :class:`ProxyConnection` keeps the
slot until its first request head is complete; the sweep closes a connection
whose head (the first one: counted from the end of the handshake) takes longer
than ``head_timeout``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable, Mapping

from agent.kube_aad_proxy.config import (
    WRITE_HIGH_WATER,
    WRITE_LOW_WATER,
    KubeAadProxyConfig,
)
from agent.kube_aad_proxy.connection import ProxyConnection
from agent.kube_aad_proxy.health import UpstreamHealth
from agent.kube_aad_proxy.names import NameMapper, NamePrefixes
from agent.kube_aad_proxy.oidc import OidcGate, TokenValidatorLike, audiences_of, issuers_of
from agent.kube_aad_proxy.policy import HeaderPolicy
from agent.kube_aad_proxy.upstream import upstream_ssl_context
from certs import server_ssl_context
from tunnel import PreAuthGate, PreAuthSlot

log = logging.getLogger("agent.kube_aad_proxy")


class TlsAcceptor(asyncio.Protocol):
    """A freshly accepted TCP connection, until its TLS handshake is done."""

    def __init__(self, proxy: KubeAadProxy, ssl_context: ssl.SSLContext) -> None:
        self.proxy = proxy
        self.ssl_context = ssl_context
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Not one byte before start_tls: the ClientHello belongs to TLS.
        transport.pause_reading()
        slot = self.proxy.preauth.admit()
        if slot is None:
            transport.abort()
            return
        self.transport = transport
        self.proxy.handshaking.add(self)
        self.task = asyncio.get_running_loop().create_task(self._handshake(transport, slot))

    async def _handshake(self, transport: asyncio.Transport, slot: PreAuthSlot) -> None:
        conn = ProxyConnection(self.proxy, slot)
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(transport, conn, self.ssl_context, server_side=True,
                                       ssl_handshake_timeout=self.proxy.config.tls_handshake_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError and resets are OSErrors
            slot.release()
            log.info("tls handshake failed peer=%r reason=%r", _peer(transport), _tls_reason(exc))
            transport.abort()
            return
        except asyncio.CancelledError:
            slot.release()
            transport.abort()
            raise
        finally:
            self.proxy.handshaking.discard(self)
        assert tls is not None  # start_tls returns a transport or raises
        conn.connection_made(tls)

    def abort(self) -> None:
        """Drop the connection (proxy stop)."""
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)
    if isinstance(exc, (TimeoutError, ConnectionAbortedError)):
        return "handshake not complete in time or aborted"
    return exc.__class__.__name__


def _gate(config: KubeAadProxyConfig) -> OidcGate | None:
    """The OIDC gate of ``config``'s validator (None: pass-through only).

    Raises:
        ValueError: a validator without a trusted issuer.
    """
    if config.validator is None:
        return None
    issuers = config.trusted_issuers if config.trusted_issuers is not None else issuers_of(config.validator)
    if not issuers:
        raise ValueError("validator has no trusted issuers; pass trusted_issuers")
    return OidcGate(config.validator, issuers, audiences_of(config.validator))


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
        gate = _gate(config)
        self.gate = gate
        #: called with the new validator after :meth:`reload_identity` (metrics)
        self.reload_listeners: list[Callable[[TokenValidatorLike | None], None]] = []
        self.policy = HeaderPolicy(gate, config.upstream_token, config.impersonate_with,
                                   NameMapper(config.name_prefixes))
        self.upstream_ssl = upstream_ssl_context(config)
        self.write_high = WRITE_HIGH_WATER
        self.write_low = WRITE_LOW_WATER
        self.connections: set[ProxyConnection] = set()
        self.handshaking: set[TlsAcceptor] = set()
        self.preauth = PreAuthGate(config.max_preauth_connections, log, "kube-aad-proxy",
                                   "max_preauth_connections")
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Readiness (the API server answered) and counters (agent/kube_aad_proxy/health.py).
        self.health = UpstreamHealth(config, self.upstream_ssl)

    def reload_identity(self, validator: TokenValidatorLike | None,
                        name_prefixes: Mapping[str, NamePrefixes] | None) -> None:
        """Trust ``validator``'s issuers and map names with ``name_prefixes``
        from the next request head on; open connections stay (SIGHUP). The
        caller closes the old validator.

        Raises:
            ValueError: ``validator`` has no trusted issuer (nothing changes).
        """
        config = dataclasses.replace(self.config, validator=validator, trusted_issuers=None,
                                     name_prefixes=name_prefixes)
        gate = _gate(config)
        if gate is not None and self.gate is not None:
            self.gate.retarget(gate.validator, gate.trusted_issuers, gate.trusted_audiences)
        else:
            self.gate = gate
        self.config = config
        self.policy.use(self.gate, NameMapper(name_prefixes))
        for listener in self.reload_listeners:
            listener(validator)

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
        # Plain TCP here and TLS per connection (TlsAcceptor): the handshake
        # counts against the pre-authentication bound.
        self._server = await loop.create_server(lambda: TlsAcceptor(self, ctx), host, port,
                                                reuse_address=True)
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
        self.health.close()
        for acceptor in list(self.handshaking):
            acceptor.abort()
        for conn in list(self.connections):
            conn.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except TimeoutError:
            log.warning("connections still closing at stop")
        log.info("stopped")

    @property
    def preauth_connections(self) -> int:
        """Connections held now before their first request head is complete."""
        return self.preauth.held

    async def _sweep(self) -> None:
        """Apply head and idle timeouts; one timer for all connections, not one each."""
        interval = max(0.05, min(10.0, self.config.head_timeout / 2, self.config.idle_timeout / 2))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)
