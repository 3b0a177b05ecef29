"""The asyncio adapter of tunnel v1: drives the sans-I/O core over a websocket
(aiohttp's, or the native one of aio_ws_native.py).

Public names (re-exported lazily by ``tunnel/__init__.py``)::

    TunnelConfig, ws_connect_kwargs, server_websocket_response   (aio_config)
    adapter_limits, ADAPTER_SEND_PAYLOAD, ADAPTER_STREAM_WINDOW  (aio_config)
    TunnelSession                                               (aio_session)
    TunnelStream                                                (aio_stream)
    splice, splice_streams                                      (aio_splice)
    join_streams                                                (aio_forward)
    StreamError, StreamReset, StreamRefused, TunnelClosed       (aio_errors)
    tune_allocator                                              (aio_alloc)
    MessageTransport, TransportClosed                           (message_transport)
    AiohttpTransport                                            (aio_ws_aiohttp)
    NativeWebSocket                                             (aio_ws_native)
    serve_websockets, UpgradeRequest, adopt_connection,
    read_upgrade, refuse_upgrade, complete_upgrade              (aio_ws_accept)
    dial_websocket, open_tunnel_websocket, WebSocketHandshakeRefused,
    ProxyRefused                                                (aio_ws_dial)

The session does its I/O through a ``MessageTransport`` (message_transport.py);
``AiohttpTransport`` is the one over aiohttp, which ``TunnelSession`` wraps
an aiohttp websocket in by itself; ``NativeWebSocket`` is one by itself
(public APIs only), dialled with ``dial_websocket`` and accepted with
``serve_websockets``. ``open_tunnel_websocket`` dials on the transport
``TunnelConfig.transport`` names (the agent's and arc-proxy's one dial).

Internals: aio_io.py (writer, keepalive, idle sweep, shutdown, write batches),
aio_writer.py (batching frames onto the websocket), aio_fastpath.py (dispatch
from aiohttp's parser without a task hop), aio_forward.py (stream <-> stream
at the frame level, the relay), aio_socket.py (stream <-> TCP socket without
tasks, arc-proxy and the agent).

Code outside ``tunnel/`` imports these from here, never from a
``tunnel.aio_*`` module (import-linter contract ``tunnel-adapter-public``).

Only ``tunnel/aio*.py`` import asyncio or aiohttp; the core never does.
"""

from __future__ import annotations

from tunnel import SUBPROTOCOL
from tunnel.aio_alloc import tune_allocator
from tunnel.aio_config import (
    ADAPTER_SEND_PAYLOAD,
    ADAPTER_STREAM_WINDOW,
    TunnelConfig,
    adapter_limits,
    server_websocket_response,
    ws_connect_kwargs,
)
from tunnel.aio_errors import StreamError, StreamRefused, StreamReset, TunnelClosed
from tunnel.aio_forward import join_streams
from tunnel.aio_session import StreamHandler, TunnelSession
from tunnel.aio_splice import splice, splice_streams
from tunnel.aio_stream import TunnelStream
from tunnel.aio_ws_accept import (
    UpgradeRequest,
    adopt_connection,
    complete_upgrade,
    read_upgrade,
    refuse_upgrade,
    serve_websockets,
)
from tunnel.aio_ws_aiohttp import AiohttpTransport
from tunnel.aio_ws_dial import (
    ProxyRefused,
    WebSocketHandshakeRefused,
    dial_websocket,
    open_tunnel_websocket,
)
from tunnel.aio_ws_native import NativeWebSocket
from tunnel.message_transport import MessageTransport, TransportClosed

__all__ = [
    "ADAPTER_SEND_PAYLOAD",
    "ADAPTER_STREAM_WINDOW",
    "SUBPROTOCOL",
    "AiohttpTransport",
    "MessageTransport",
    "NativeWebSocket",
    "ProxyRefused",
    "StreamError",
    "StreamHandler",
    "StreamRefused",
    "StreamReset",
    "TransportClosed",
    "TunnelClosed",
    "TunnelConfig",
    "TunnelSession",
    "TunnelStream",
    "UpgradeRequest",
    "WebSocketHandshakeRefused",
    "adapter_limits",
    "adopt_connection",
    "complete_upgrade",
    "dial_websocket",
    "join_streams",
    "open_tunnel_websocket",
    "read_upgrade",
    "refuse_upgrade",
    "serve_websockets",
    "server_websocket_response",
    "splice",
    "splice_streams",
    "tune_allocator",
    "ws_connect_kwargs",
]
