"""The relay's listening socket: TLS, slow-loris guards, aiohttp behind them.

Two TLS engines (``listener.tls_engine``):

* ``memorybio`` (default): ``relay/tls_server.py`` terminates TLS with small
  per-connection buffers; the pre-authentication gate counts a connection from
  TCP accept, the handshake has ``limits.tls_handshake_timeout_seconds``.
* ``asyncio``: asyncio's TLS transport (``create_server(ssl=...)``, what
  aiohttp's ``TCPSite`` does): ~240 KiB more per connection; the handshake is
  bounded by asyncio's ``ssl_handshake_timeout`` and the gate counts from the
  end of the handshake. Kept for comparison (``bench/relay_memory.py``).

Both put ``relay.edge.HeadGuard`` in front of aiohttp's protocol
(``runner.server()``, the public ``web.Server`` protocol factory).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl

from aiohttp import web

from relay.edge import EdgeGate, EdgeStats, HeadGuard, UpgradeRouter
from relay.edge_limits import EdgeLimits
from relay.tls_server import SharedReadBuffer, TlsTerminator
from tunnel import PreAuthSlot

log = logging.getLogger("relay")


class RelayListener:
    """Serves ``runner``'s application on one TLS port.

    Args:
        runner: A set-up ``web.AppRunner`` (no site is added).
        ssl_context: The server TLS context.
        limits: The edge bounds.
        router: Takes connect upgrades away from aiohttp (``listener.transport:
            native``, relay/native_upgrade.py); None: aiohttp serves everything.
    """

    def __init__(self, runner: web.AppRunner, ssl_context: ssl.SSLContext, limits: EdgeLimits,
                 router: UpgradeRouter | None = None) -> None:
        self.runner = runner
        self.router = router
        self.ssl_context = ssl_context
        self.limits = limits
        self.stats = EdgeStats()
        self.gate = EdgeGate(limits.max_preauth_connections, self.stats)
        self._handshaking: set[TlsTerminator] = set()
        self._read_buffer = SharedReadBuffer()
        self._server: asyncio.Server | None = None
        # ClientHello steps of TLS handshakes (relay/tls_server.py), if configured.
        self._handshake_pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def preauth_connections(self) -> int:
        """Connections held now before their first request head is complete."""
        return self.gate.held

    async def start(self, host: str, port: int) -> None:
        """Bind ``host:port`` and serve.

        Raises:
            OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        if self.limits.tls_engine == "memorybio":
            if self.limits.tls_handshake_threads > 0:
                self._handshake_pool = concurrent.futures.ThreadPoolExecutor(
                    self.limits.tls_handshake_threads, thread_name_prefix="arc-relay-tls")
            self._server = await loop.create_server(self._terminator, host, port, reuse_address=True,
                                                    backlog=self.limits.listen_backlog)
        else:
            self._server = await loop.create_server(
                lambda: self._guard(None), host, port, ssl=self.ssl_context,
                ssl_handshake_timeout=self.limits.tls_handshake_timeout, reuse_address=True,
                backlog=self.limits.listen_backlog)

    def _terminator(self) -> TlsTerminator:
        return TlsTerminator(self.ssl_context, self._guard, self.gate,
                             self.limits.tls_handshake_timeout, self._handshaking, self._read_buffer,
                             self._handshake_pool)

    def _guard(self, slot: PreAuthSlot | None) -> HeadGuard:
        server = self.runner.server
        assert server is not None, "runner.setup() must run before the listener starts"
        return HeadGuard(server(), self.gate, slot, self.limits.head_timeout, self.limits.max_head_bytes,
                         self.router)

    def close(self) -> None:
        """Stop accepting; drop connections still in their TLS handshake. Served
        connections are closed by the runner's shutdown."""
        if self._server is not None:
            self._server.close()
        for terminator in list(self._handshaking):
            terminator.abort()
        if self._handshake_pool is not None:
            # Steps already running finish on their own; their connections are aborted.
            self._handshake_pool.shutdown(wait=False, cancel_futures=True)
            self._handshake_pool = None
