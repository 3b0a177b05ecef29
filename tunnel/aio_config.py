"""Configuration of the asyncio adapter and the one way websockets are made.

Every websocket that carries the tunnel is created through ``ws_connect_kwargs``
(client side) or ``server_websocket_response`` (server side) so that both ends
agree: subprotocol ``arc-tunnel.v1``, compression off (payloads are mostly TLS
records, which do not compress, and deflate would cost more CPU than the whole
tunnel), and a message size cap derived from the frame limits.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from aiohttp import ClientWSTimeout, web

from tunnel import SUBPROTOCOL
from tunnel import limits as _limits
from tunnel.limits import Limits

__all__ = ["TRANSPORTS", "TunnelConfig", "adapter_limits", "server_websocket_response", "ws_connect_kwargs"]

# Bytes a websocket message may have on top of the largest frame payload: the
# frame header is a few bytes; 64 leaves room without admitting a second frame.
_FRAME_OVERHEAD = 64

# The websocket implementations a session can run on (``TunnelConfig.transport``).
TRANSPORTS = ("aiohttp", "native")


# DATA payload per frame when sending through this adapter. Every receiver
# accepts up to PROTOCOL_MAX_PAYLOAD, so this is a local choice. Measured with
# bench/tunnel.py (allocator tuned): 64 KiB frames cost ~35 % less CPU per byte
# than 16 KiB on both ends (0.46 vs 0.70 s/GB sender, 0.48 vs 0.73 receiver),
# because the per-frame Python work (framing, masking, dispatch) dominates. On
# the full TLS path (bench/e2e.py, arc-proxy + relay + agent, same run, 16 KiB
# as a --variant): 5.51 vs 6.64 CPU-s/GB, i.e. 17 % less for 64 KiB.
# Latency for other streams does not suffer: frames leave in FIFO batches.
# ``$ARC_TUNNEL_SEND_PAYLOAD`` overrides it (bench/e2e.py compares sizes that way).
ADAPTER_SEND_PAYLOAD = int(
    os.environ.get("ARC_TUNNEL_SEND_PAYLOAD") or _limits.PROTOCOL_MAX_PAYLOAD
)
# Largest receive window a stream of this adapter grows to (every stream starts
# at INITIAL_STREAM_WINDOW and doubles while its reader keeps up: auto-tuning,
# tunnel/windows.py). One stream moves at most
# window / RTT, and on the full path the RTT is three busy event loops, not a
# wire: bench/e2e.py, same run, 1 / 4 / 8 / 16 MiB: 294 / 353 / 353 / 364 MB/s
# and 5.39 / 4.67 / 4.73 / 4.99 CPU-s/GB (fewer stalls also mean bigger batches
# per wake-up). 4 MiB takes nearly all of it. What a session's receiver holds
# unread is bounded by ``Limits.buffer_bound`` (initial windows of every stream
# plus the growth budget), whatever the number of stalled readers.
# ``$ARC_TUNNEL_STREAM_WINDOW`` overrides it.
ADAPTER_STREAM_WINDOW = int(
    os.environ.get("ARC_TUNNEL_STREAM_WINDOW") or 4 * 1024 * 1024
)


def adapter_limits(**overrides: Any) -> Limits:
    """The core's limits with this adapter's DATA frame size and stream
    window (see above); ``overrides`` (e.g. from a config file) win."""
    return Limits(**{"max_send_payload": ADAPTER_SEND_PAYLOAD,
                     "stream_window": ADAPTER_STREAM_WINDOW, **overrides})


@dataclasses.dataclass(frozen=True)
class TunnelConfig:
    """Limits and timeouts of one tunnel session (seconds; 0 disables a timer).

    Attributes:
        limits: The core's limits (windows, frame sizes, stream counts); by
            default ``adapter_limits()``: the core's, but sending 64 KiB DATA
            frames and letting stream windows grow to 4 MiB.
        open_timeout: How long ``open_stream`` waits for OPEN_OK before it
            resets the stream with OPEN_TIMEOUT.
        idle_timeout: A stream with no traffic in either direction for this
            long is reset with IDLE_TIMEOUT; 0 turns it off. One hour by
            default: ``kubectl get -w`` and ``logs -f`` are silent for minutes.
        handshake_timeout: Bound for the websocket handshake plus
            authentication; applied by whoever dials/accepts (relay, agent,
            client), not by the session.
        ping_interval: The dialling side pings this often; the accepting
            side pings a peer silent (no PING) for 1.5 times this long (the
            PONG also measures ``session.rtt``).
        ping_timeout: A ping unanswered for this long means the peer is dead:
            the session is closed.
        fast_dispatch: Dispatch binary messages synchronously from aiohttp's
            parser (aio_fastpath.py) instead of through ``ws.receive()``;
            default on unless ``$ARC_TUNNEL_FASTPATH`` is ``0``.
        transport: The websocket implementation of the dialling side:
            ``aiohttp`` (default) or ``native`` (aio_ws_native.py, public
            APIs only); ``$ARC_TUNNEL_TRANSPORT`` sets the default.
    """

    limits: Limits = dataclasses.field(default_factory=adapter_limits)
    open_timeout: float = _limits.OPEN_TIMEOUT
    idle_timeout: float = _limits.IDLE_TIMEOUT
    handshake_timeout: float = _limits.HANDSHAKE_TIMEOUT
    ping_interval: float = _limits.PING_INTERVAL
    ping_timeout: float = _limits.PING_TIMEOUT
    fast_dispatch: bool = dataclasses.field(
        default_factory=lambda: os.environ.get("ARC_TUNNEL_FASTPATH", "1") != "0"
    )
    transport: str = dataclasses.field(
        default_factory=lambda: os.environ.get("ARC_TUNNEL_TRANSPORT") or "aiohttp"
    )

    def __post_init__(self) -> None:
        for name in (
            "open_timeout",
            "idle_timeout",
            "handshake_timeout",
            "ping_interval",
            "ping_timeout",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"TunnelConfig.{name} must be >= 0")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"TunnelConfig.transport must be one of {', '.join(TRANSPORTS)}, "
                             f"not {self.transport!r}")

    @property
    def max_message_size(self) -> int:
        """Largest websocket message the tunnel accepts (one frame)."""
        return self.limits.max_receive_payload + _FRAME_OVERHEAD


def ws_connect_kwargs(config: TunnelConfig | None = None) -> dict[str, Any]:
    """Keyword arguments for ``aiohttp.ClientSession.ws_connect``.

    Args:
        config: The session configuration (default: ``TunnelConfig()``).

    Returns:
        A dict to splat into ``ws_connect(url, **ws_connect_kwargs(config))``;
        then pass the websocket to ``TunnelSession(ws, is_client=True, ...)``.
    """
    config = config or TunnelConfig()
    return {
        "protocols": (SUBPROTOCOL,),
        "compress": 0,
        # The tunnel has its own PING/PONG (with RTT); websocket-level pings
        # from the peer are still answered by aiohttp (autoping).
        "autoping": True,
        "heartbeat": None,
        "max_msg_size": config.max_message_size,
        "timeout": ClientWSTimeout(ws_receive=None, ws_close=_limits.CLOSE_TIMEOUT),
    }


def server_websocket_response(config: TunnelConfig | None = None) -> web.WebSocketResponse:
    """A prepared-to-be ``WebSocketResponse`` for the server side of a tunnel.

    Args:
        config: The session configuration (default: ``TunnelConfig()``).

    Returns:
        The response; call ``await ws.prepare(request)`` then
        ``TunnelSession(ws, is_client=False, ...)``. The session refuses the
        websocket if the client did not negotiate ``arc-tunnel.v1``.
    """
    config = config or TunnelConfig()
    return web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        compress=False,
        autoping=True,
        heartbeat=None,
        max_msg_size=config.max_message_size,
        timeout=_limits.CLOSE_TIMEOUT,
        # Check for transport back-pressure only every 1 MiB written: the
        # check is cheap but per frame it shows in profiles.
        writer_limit=1 << 20,
    )
