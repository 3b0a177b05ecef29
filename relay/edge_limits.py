"""Bounds on what the relay's listening port holds before a request is known.

A connection is *pre-authentication* from TCP accept until its first request
head is complete (``relay/edge.py``); from there the endpoints' own handshake
timeout (``limits.tunnel.handshake_timeout``) bounds authentication and the
websocket upgrade, and aiohttp's keep-alive timeout bounds a later, partial
head on a kept-alive connection.

YAML::

    listener: {tls_engine: memorybio,          # or asyncio (aiohttp's own TLS site)
               tls_handshake_threads: 2,       # ClientHello steps off the event loop (0: inline)
               transport: aiohttp}             # or native (relay/native_upgrade.py)
    limits: {tls_handshake_timeout_seconds: 10, head_timeout_seconds: 10,
             max_head_bytes: 65536, max_preauth_connections: 1024,
             keepalive_timeout_seconds: 75, listen_backlog: 4096}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

# A TLS handshake is one or two round trips; ten seconds covers a slow mobile
# link and still frees a stalled socket quickly.
TLS_HANDSHAKE_TIMEOUT = 10.0
# Agents and arc-proxy send their upgrade head in one write right after TLS.
HEAD_TIMEOUT = 10.0
# The longest head we expect: a 16 KiB bearer (relay.state.MAX_BEARER_LENGTH)
# plus ordinary headers, with room to spare.
MAX_HEAD_BYTES = 64 * 1024
# Each pre-authentication connection costs a TLS session (~20 KiB); 1024 of
# them is ~20 MiB, and 1024 handshakes in flight is far beyond a normal burst
# of reconnecting agents (they back off with jitter).
MAX_PREAUTH_CONNECTIONS = 1024
# aiohttp's default: a kept-alive connection with no request in progress.
KEEPALIVE_TIMEOUT = 75.0
# Connections the kernel queues before the relay accepts them. asyncio's default
# (100) overflows when thousands of agents redial after a relay restart: each
# dropped SYN is retried by the agent's kernel only after 1, 3, 7 s, which shows
# as multi-second stalls of /readyz and /metrics (bench/scale.py counts
# ListenOverflows). The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096
TLS_ENGINES = ("memorybio", "asyncio")
# Threads answering ClientHellos (memorybio engine): OpenSSL's key exchange and
# signature (~0.6 ms each) run without the GIL, so the event loop stays
# responsive during a reconnect storm; two use a second core without letting
# handshakes crowd out the loop on a small machine.
TLS_HANDSHAKE_THREADS = 2
# Websockets of the connect paths (``listener.transport``).
TRANSPORTS = ("aiohttp", "native")


def default_transport() -> Literal["aiohttp", "native"]:
    """``listener.transport`` when unset: ``$ARC_TUNNEL_TRANSPORT`` (the
    switch the dialling side reads too), else ``aiohttp``."""
    return "native" if os.environ.get("ARC_TUNNEL_TRANSPORT") == "native" else "aiohttp"


@dataclass(frozen=True)
class EdgeLimits:
    """Listener bounds (module docstring).

    Args:
        tls_engine: ``memorybio`` (``relay/tls_server.py``: small per-connection
            buffers) or ``asyncio`` (aiohttp's TLS site: asyncio's TLS transport).
        tls_handshake_timeout: Seconds from TCP accept to a finished TLS handshake.
        head_timeout: Seconds from the TLS handshake to a complete first request head.
        max_head_bytes: Largest first request head; a longer one is closed.
        max_preauth_connections: Connections held before their first head is
            complete; beyond it new ones are closed at once.
        keepalive_timeout: Seconds an idle kept-alive HTTP connection is held.
        listen_backlog: The listening socket's accept queue (capped by the
            kernel's net.core.somaxconn).
        tls_handshake_threads: Pool threads for the ClientHello step of TLS
            handshakes (``memorybio`` engine; 0: on the event loop).
        transport: The websocket of the agent and client connect paths:
            ``aiohttp`` or ``native`` (relay/native_upgrade.py).
    """

    tls_engine: str = "memorybio"
    tls_handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT
    head_timeout: float = HEAD_TIMEOUT
    max_head_bytes: int = MAX_HEAD_BYTES
    max_preauth_connections: int = MAX_PREAUTH_CONNECTIONS
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    listen_backlog: int = LISTEN_BACKLOG
    tls_handshake_threads: int = TLS_HANDSHAKE_THREADS
    transport: str = field(default_factory=lambda: default_transport())

    def __post_init__(self) -> None:
        if self.tls_engine not in TLS_ENGINES:
            raise ValueError(f"listener.tls_engine {self.tls_engine!r} must be one of {', '.join(TLS_ENGINES)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"listener.transport {self.transport!r} must be one of {', '.join(TRANSPORTS)}")
        for name in ("tls_handshake_timeout", "head_timeout", "keepalive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"limits.{name}_seconds must be > 0")
        if self.max_head_bytes < 1024:
            raise ValueError("limits.max_head_bytes must be >= 1024")
        if self.max_preauth_connections < 1:
            raise ValueError("limits.max_preauth_connections must be >= 1")
        if self.listen_backlog < 1:
            raise ValueError("limits.listen_backlog must be >= 1")
        if not 0 <= self.tls_handshake_threads <= 64:
            raise ValueError("listener.tls_handshake_threads must be 0..64")

