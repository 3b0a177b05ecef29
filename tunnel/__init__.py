"""tunnel v1: stream multiplexing over one websocket.

The sans-I/O core (:class:`Connection`, frames, events, errors, limits) imports
only the standard library. The asyncio adapter names (:class:`TunnelSession` and
friends, docs/INTERFACES.md section 1) are exported lazily (PEP 562): the first
access imports :mod:`tunnel.aio`, so ``import tunnel`` never imports asyncio or
aiohttp.

Note: ``tunnel.StreamReset`` is the adapter's exception; the core event of the
same name is :class:`tunnel.events.StreamReset` (also exported as
``StreamResetEvent`` here).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tunnel.connection import Connection
from tunnel.errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    TunnelError,
    status_hint_for,
)
from tunnel.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PingReceived,
    PongReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    WindowUpdated,
)
from tunnel.events import StreamReset as StreamResetEvent
from tunnel.frames import Frame, FrameType
from tunnel.limits import Limits
from tunnel.preauth import PreAuthGate, PreAuthSlot
from tunnel.redial import (
    RETRY_AFTER_CAP,
    RETRY_AFTER_JITTER,
    Backoff,
    retry_after_delay,
    retry_after_seconds,
)
from tunnel.state import ConnectionState, StreamState
from tunnel.targets import CENTRAL_RBAC_TARGET, CONTROL_TARGET, UPSTREAM_TARGET

if TYPE_CHECKING:
    from tunnel.aio import (
        StreamRefused,
        StreamReset,
        TunnelClosed,
        TunnelConfig,
        TunnelSession,
        TunnelStream,
        join_streams,
        open_tunnel_websocket,
        server_websocket_response,
        splice,
        splice_streams,
        ws_connect_kwargs,
    )

SUBPROTOCOL = "arc-tunnel.v1"

# Names served by tunnel.aio, imported on first access (PEP 562).
_ADAPTER_NAMES = frozenset(
    {
        "StreamRefused",
        "StreamReset",
        "TunnelClosed",
        "TunnelConfig",
        "TunnelSession",
        "TunnelStream",
        "join_streams",
        "open_tunnel_websocket",
        "server_websocket_response",
        "splice",
        "splice_streams",
        "ws_connect_kwargs",
    }
)

__all__ = [
    "CENTRAL_RBAC_TARGET",
    "CONTROL_TARGET",
    "RETRY_AFTER_CAP",
    "RETRY_AFTER_JITTER",
    "SUBPROTOCOL",
    "UPSTREAM_TARGET",
    "Backoff",
    "Connection",
    "ConnectionState",
    "DataReceived",
    "ErrorCode",
    "Event",
    "Frame",
    "FrameType",
    "GoAwayReceived",
    "Limits",
    "LocalProtocolError",
    "PingReceived",
    "PongReceived",
    "PreAuthGate",
    "PreAuthSlot",
    "ProtocolError",
    "RemoteProtocolError",
    "StreamAccepted",
    "StreamEnded",
    "StreamOpened",
    "StreamRefused",
    "StreamReset",
    "StreamResetEvent",
    "StreamState",
    "TunnelClosed",
    "TunnelConfig",
    "TunnelError",
    "TunnelSession",
    "TunnelStream",
    "WindowUpdated",
    "join_streams",
    "open_tunnel_websocket",
    "retry_after_delay",
    "retry_after_seconds",
    "server_websocket_response",
    "splice",
    "splice_streams",
    "status_hint_for",
    "ws_connect_kwargs",
]


def __getattr__(name: str) -> Any:
    """Import the asyncio adapter on first access to one of its names."""
    if name in _ADAPTER_NAMES:
        value = getattr(importlib.import_module("tunnel.aio"), name)
        globals()[name] = value  # later accesses skip __getattr__
        return value
    raise AttributeError(f"module 'tunnel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ADAPTER_NAMES)
