"""``GET /agent/v1/connect``: where agents dial in.

The agent sends ``Authorization: Bearer <assertion>`` (identity.agent_assertion);
the relay verifies it against the certificate registered for the cluster the
assertion claims, then runs a tunnel session. One live session per cluster: a
newer authenticated connection replaces the old one, which gets GOAWAY and
drains its streams.

Metadata: the agent opens a stream with target ``b"control"`` and writes JSON
objects, one per line (``{"agentVersion", "kubernetesVersion", "totalNodeCount",
"totalCoreCount"}``, all optional); the relay stores each in the registry. The
relay never writes on that stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial

from aiohttp import web

from identity import TokenInvalid
from identity.agent_assertion import unverified_cluster_id
from relay.names import validate_agent_metadata
from relay.state import STATE, RelayState, bearer_token, json_error
from tunnel import (
    ErrorCode,
    StreamReset,
    TunnelClosed,
    TunnelSession,
    TunnelStream,
    server_websocket_response,
)

log = logging.getLogger("relay")

CONTROL_TARGET = b"control"
# A metadata line is a few hundred bytes; anything longer is not ours.
MAX_CONTROL_LINE = 4096


def _refuse(state: RelayState, request: web.Request, reason: str, claimed: str | None) -> web.Response:
    state.metrics.auth_failures.labels("agent", reason).inc()
    log.info("agent refused reason=%r claimed_cluster=%r peer=%s", reason,
             (claimed or "")[:160], request.remote)
    return json_error(401, "InvalidAssertion", f"agent refused: {reason}",
                      **{"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def control_stream(state: RelayState, cid: str, stream: TunnelStream) -> None:
    """``on_stream`` of an agent session: accept only the control stream and
    store each metadata line it carries."""
    if stream.target != CONTROL_TARGET:
        stream.reject(ErrorCode.NOT_FOUND, "agents may open only the 'control' stream")
        return
    stream.accept()
    buffer = b""
    try:
        while chunk := await stream.read(MAX_CONTROL_LINE):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                _store_metadata(state, cid, line)
            if len(buffer) > MAX_CONTROL_LINE:
                stream.reset(ErrorCode.PROTOCOL_ERROR, "control line too long")
                return
    except (StreamReset, TunnelClosed):
        return
    finally:
        await stream.aclose()


def _store_metadata(state: RelayState, cid: str, line: bytes) -> None:
    try:
        data = json.loads(line)
    except ValueError:
        log.info("agent metadata ignored cluster=%s reason='not JSON'", cid)
        return
    if isinstance(data, dict):
        data, problems = validate_agent_metadata(data)
        if problems:
            log.info("agent metadata refused fields cluster=%s problems=%r", cid, problems)
        state.registry.set_metadata(cid, data)
        log.info("agent metadata cluster=%s agentVersion=%s kubernetesVersion=%s nodes=%s cores=%s",
                 cid, data.get("agentVersion"), data.get("kubernetesVersion"),
                 data.get("totalNodeCount"), data.get("totalCoreCount"))


async def agent_connect(request: web.Request) -> web.StreamResponse:
    """Authenticate an agent, then serve its tunnel session until it ends."""
    state = request.app[STATE]
    if not state.accepting:
        return json_error(503, "ShuttingDown", "relay is shutting down; retry shortly")
    token = bearer_token(request)
    if token is None:
        return _refuse(state, request, "missing assertion", None)
    claimed: str | None = None
    try:
        claimed = unverified_cluster_id(token)
        cluster = state.registry.get(claimed)
        if cluster is None:
            raise TokenInvalid("unknown cluster")
        cid = state.verifier.verify(token, cluster.agent_public_key_certificate)
    except TokenInvalid as exc:
        return _refuse(state, request, exc.reason, claimed)

    ws = server_websocket_response(state.tunnel_config)
    try:
        # A peer that stalls the upgrade must not hold a handler forever.
        async with asyncio.timeout(state.tunnel_config.handshake_timeout or None):
            await ws.prepare(request)
    except TimeoutError:
        log.info("agent handshake timed out cluster=%s peer=%s", cid, request.remote)
        if not ws.prepared:
            return json_error(504, "HandshakeTimeout", "websocket handshake timed out")
        if request.transport is not None:
            request.transport.abort()
        return ws
    session = TunnelSession(ws, is_client=False, config=state.tunnel_config, name=f"agent:{cid}",
                            on_stream=partial(control_stream, state, cid))
    state.sessions.add(session)
    state.metrics.sessions.labels("agent").inc()
    state.metrics.sessions_total.labels("agent").inc()
    previous = state.directory.register(cid, session)
    state.registry.set_connectivity(cid, "Connected")
    log.info("agent connected cluster=%s peer=%s replaced=%s", cid, request.remote, previous is not None)
    if previous is not None:
        # The old session drains its streams; new streams go to this one.
        state.spawn(previous.goaway())
    try:
        await session.run()
    finally:
        state.sessions.discard(session)
        state.metrics.sessions.labels("agent").dec()
        if state.directory.unregister(cid, session):
            state.registry.set_connectivity(cid, "Offline")
        log.info("agent disconnected cluster=%s reason=%r", cid, _reason(session))
    return ws


def _reason(session: TunnelSession) -> str:
    return str(getattr(session, "close_reason", "") or "")[:200]


def add_routes(app: web.Application) -> None:
    """Register ``/agent/v1/connect`` on ``app``."""
    app.router.add_get("/agent/v1/connect", agent_connect, allow_head=False)
