"""Streaming subresources of the sandbox API server: exec, attach and
port-forward over websocket (v5/v4 channel protocols, SPDY-over-websocket) and
SPDY/3.1.

The API server authenticates and authorises the request, then hands it over:
``await serve_upgrade(kind, req, runtime)`` writes the 101 (or a Status error
response) itself and returns when the session is over; the caller then closes
the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from sandbox.runtime import ContainerNotFound, PodRuntime
from sandbox.streaming.channels import serve_ws_exec
from sandbox.streaming.http import header_tokens, websocket_accept, write_error, write_switching
from sandbox.streaming.options import (
    PORTFORWARD_SPDY,
    PORTFORWARD_WS_TUNNEL,
    SPDY_EXEC_PROTOCOLS,
    WS_EXEC_PROTOCOLS,
    StreamOptions,
)
from sandbox.streaming.portforward import serve_portforward
from sandbox.streaming.request import UpgradeRequest
from sandbox.streaming.spdy_exec import serve_spdy_exec
from sandbox.streaming.transport import StreamTransport
from sandbox.streaming.websocket import WsConnection, WsTransport

__all__ = ["UpgradeRequest", "serve_upgrade"]

log = logging.getLogger("sandbox.streaming")
KINDS = ("exec", "attach", "portforward")


async def serve_upgrade(kind: str, req: UpgradeRequest, runtime: PodRuntime | None) -> None:
    """Serve one exec/attach/portforward request on its connection.

    Args:
        kind: ``"exec"``, ``"attach"`` or ``"portforward"``.
        req: the authenticated, authorised request; nothing written yet.
        runtime: the pod's runtime (None: the pod has none, answered with 404).

    Writes the 101 (or a Kubernetes Status error) and returns when the session
    ends; the caller closes the connection afterwards.
    """
    if kind not in KINDS:
        await write_error(req, 404, f"unknown streaming subresource {kind!r}")
        return
    if runtime is None or runtime.stopped:
        await write_error(req, 404, "pod has no running containers in this sandbox")
        return
    opts = StreamOptions.from_request(req)
    if kind != "portforward":
        problem = _validate(kind, opts, runtime)
        if problem:
            await write_error(req, 400, problem)
            return
    upgrade = (req.header("upgrade") or "").lower()
    if "websocket" in upgrade:
        body = await _websocket(kind, req, runtime, opts)
    elif "spdy/3.1" in upgrade:
        body = await _spdy(kind, req, runtime, opts)
    else:
        await write_error(req, 400, "Upgrade request required")
        return
    if body is None:
        return
    log.info("%s upgraded pod=%s/%s user=%s", kind, runtime.namespace, runtime.name, req.user)
    task = asyncio.create_task(body)
    runtime.track(task)
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
        await task
    log.info("%s ended pod=%s/%s", kind, runtime.namespace, runtime.name)


def _validate(kind: str, opts: StreamOptions, runtime: PodRuntime) -> str | None:
    if not (opts.stdin or opts.stdout or opts.stderr):
        return "you must specify at least one of stdin, stdout, stderr"
    if kind == "exec" and not opts.command:
        return "you must specify at least 1 command"
    try:
        runtime.container(opts.container)
    except ContainerNotFound as exc:
        return str(exc)
    return None


async def _websocket(kind: str, req: UpgradeRequest, runtime: PodRuntime,
                     opts: StreamOptions) -> Coroutine[Any, Any, None] | None:
    key = req.header("sec-websocket-key")
    if not key:
        await write_error(req, 400, "websocket upgrade without Sec-WebSocket-Key")
        return None
    offered = header_tokens(req, "sec-websocket-protocol")
    supported = (PORTFORWARD_WS_TUNNEL,) if kind == "portforward" else WS_EXEC_PROTOCOLS
    chosen = next((p for p in offered if p in supported), None)
    if chosen is None and (offered or kind == "portforward"):
        # A non-101 makes kubectl fall back to SPDY.
        await write_error(req, 400, f"unable to upgrade: none of the requested subprotocols "
                                    f"{offered} is supported (supported: {list(supported)})")
        return None
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", websocket_accept(key))]
    if chosen:
        headers.append(("Sec-WebSocket-Protocol", chosen))
    await write_switching(req, headers)
    ws = WsConnection(req.reader, req.writer)
    if kind == "portforward":
        return serve_portforward(WsTransport(ws), runtime)
    return serve_ws_exec(kind, ws, chosen or "channel.k8s.io", runtime, opts)


async def _spdy(kind: str, req: UpgradeRequest, runtime: PodRuntime,
                opts: StreamOptions) -> Coroutine[Any, Any, None] | None:
    offered = header_tokens(req, "x-stream-protocol-version")
    supported = (PORTFORWARD_SPDY,) if kind == "portforward" else SPDY_EXEC_PROTOCOLS
    if not offered:
        await write_error(req, 400, "unable to upgrade: X-Stream-Protocol-Version is required")
        return None
    chosen = next((p for p in offered if p in supported), None)
    if chosen is None:
        await write_error(
            req, 403, f"unable to upgrade: unable to negotiate protocol: client supports "
                      f"{offered}, server supports {list(supported)}",
            headers=[("X-Accepted-Stream-Protocol-Versions", ", ".join(supported))])
        return None
    await write_switching(req, [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                ("X-Stream-Protocol-Version", chosen)])
    transport = StreamTransport(req.reader, req.writer)
    if kind == "portforward":
        return serve_portforward(transport, runtime)
    return serve_spdy_exec(kind, transport, chosen, runtime, opts)
