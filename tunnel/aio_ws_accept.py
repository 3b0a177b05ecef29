"""The accepting side of the native transport: a listener whose connections
are ``NativeWebSocket`` protocols (aio_ws_native.py) from the first byte.

``serve_websockets`` reads each connection's HTTP/1.1 upgrade request,
refuses what is not a websocket upgrade (400, 426 for another version) or
what the caller's ``authorize`` refuses (its status and headers), answers 101
with ``arc-tunnel.v1`` when the client offered it (no extension is ever
accepted: permessage-deflate is not negotiated), and hands the websocket to
the caller's handler. TLS, when given an ``ssl.SSLContext``, is asyncio's.

A server that reads the first head itself (the relay's listener routes an
upgrade away from aiohttp before aiohttp sees it) takes the connection over
with ``adopt_connection`` and runs the same steps one by one:
``read_upgrade`` (400 / 426 answered), its own checks (``refuse_upgrade``
with its status, headers and body), then ``complete_upgrade`` (101).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from tunnel import SUBPROTOCOL
from tunnel.aio_config import TunnelConfig
from tunnel.aio_ws_dial import accept_key, parse_head
from tunnel.aio_ws_native import NativeWebSocket

__all__ = [
    "UpgradeRequest",
    "adopt_connection",
    "complete_upgrade",
    "read_upgrade",
    "refuse_upgrade",
    "serve_websockets",
]

log = logging.getLogger("tunnel")


@dataclasses.dataclass(frozen=True)
class UpgradeRequest:
    """What the client asked for: ``path`` (with the query) and its headers."""

    path: str
    headers: CIMultiDict[str]


Refusal = tuple[int, dict[str, str]]
Authorize = Callable[[UpgradeRequest], Awaitable[Refusal | None]]
Handler = Callable[[NativeWebSocket, UpgradeRequest], Awaitable[None]]

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            426: "Upgrade Required", 429: "Too Many Requests", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def refuse_upgrade(ws: NativeWebSocket, status: int, headers: dict[str, str] | None = None,
                   body: bytes = b"") -> None:
    """Answer the upgrade request with ``status`` (the connection closes after
    it: the caller closes the transport)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Refused')}", f"Content-Length: {len(body)}",
             "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with contextlib.suppress(ConnectionError):
        ws.write_raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def adopt_connection(transport: asyncio.Transport, received: bytes, *,
                     max_message_size: int) -> NativeWebSocket:
    """A server-side ``NativeWebSocket`` that takes over ``transport`` now
    (``transport.set_protocol``), ``received`` being the bytes its previous
    protocol already read (the head, maybe more): ``read_upgrade`` next."""
    ws = NativeWebSocket(is_client=False, max_message_size=max_message_size)
    ws.connection_made(transport)
    transport.set_protocol(ws)
    if received:
        ws.data_received(received)
    return ws


async def read_upgrade(ws: NativeWebSocket) -> UpgradeRequest | None:
    """Read and check the upgrade request; None when it is not a websocket
    upgrade (400, or 426 for another version: the answer is written)."""
    try:
        start_line, headers = parse_head(await ws.read_head())
    except ValueError:
        refuse_upgrade(ws, 400)
        return None
    parts = start_line.split(" ")
    key = headers.get("Sec-WebSocket-Key", "")
    if (len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/1.")
            or headers.get("Upgrade", "").lower() != "websocket"
            or "upgrade" not in headers.get("Connection", "").lower() or not key):
        refuse_upgrade(ws, 400)
        return None
    if headers.get("Sec-WebSocket-Version") != "13":
        refuse_upgrade(ws, 426, {"Sec-WebSocket-Version": "13"})
        return None
    return UpgradeRequest(parts[1], headers)


def complete_upgrade(ws: NativeWebSocket, request: UpgradeRequest) -> None:
    """Answer 101 (with ``arc-tunnel.v1`` when the client offered it) and
    switch ``ws`` to websocket frames."""
    headers = request.headers
    offered = [p.strip() for value in headers.getall("Sec-WebSocket-Protocol", []) for p in value.split(",")]
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(headers['Sec-WebSocket-Key'].encode())}"]
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    ws.write_raw(("\r\n".join(lines) + "\r\n\r\n").encode())
    ws.start_websocket(subprotocol)


async def _upgrade(ws: NativeWebSocket, authorize: Authorize | None) -> UpgradeRequest | None:
    """The upgrade handshake; None when refused (the answer is written)."""
    request = await read_upgrade(ws)
    if request is None:
        return None
    if authorize is not None:
        refusal = await authorize(request)
        if refusal is not None:
            refuse_upgrade(ws, *refusal)
            return None
    complete_upgrade(ws, request)
    return request


async def serve_websockets(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    config: TunnelConfig | None = None,
    authorize: Authorize | None = None,
) -> asyncio.Server:
    """Listen on ``host``:``port`` (0: any free port) and run ``handler(ws,
    request)`` for each accepted websocket; the connection is closed when it
    returns. The handshake (TLS included) is bounded by
    ``config.handshake_timeout``.

    Returns:
        The started ``asyncio.Server`` (close it to stop listening).
    """
    config = config or TunnelConfig()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def run(ws: NativeWebSocket) -> None:
        try:
            async with asyncio.timeout(config.handshake_timeout or None):
                request = await _upgrade(ws, authorize)
            if request is not None:
                await handler(ws, request)
        except (TimeoutError, ConnectionError) as err:
            log.debug("websocket handshake failed: %s", type(err).__name__)
        finally:
            transport = ws.transport
            if transport is not None and not transport.is_closing():
                transport.close()

    def accept() -> NativeWebSocket:
        ws = NativeWebSocket(is_client=False, max_message_size=config.max_message_size)
        task = loop.create_task(run(ws))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return ws

    return await loop.create_server(accept, host, port, ssl=ssl_context)
