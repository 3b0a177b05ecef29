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
from relay.state import (
    STATE,
    RelayState,
    admission_refused,
    bearer_token,
    json_error,
    upgrade_aborted,
)
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
        state.registry.set_metadata(cid, data)
        log.info("agent metadata cluster=%s agentVersion=%s kubernetesVersion=%s nodes=%s cores=%s",
                 cid, data.get("agentVersion"), data.get("kubernetesVersion"),
                 data.get("totalNodeCount"), data.get("totalCoreCount"))


async def agent_connect(request: web.Request) -> web.StreamResponse:
    """Admit, authenticate and upgrade an agent, then serve its tunnel session."""
    state = request.app[STATE]
    if not state.accepting:
        return json_error(503, "ShuttingDown", "relay is shutting down; retry shortly")
    if not state.admission.try_admit():
        return admission_refused(state, "agent")
    state.metrics.handshakes_in_flight.inc()
    try:
        upgraded = await _agent_handshake(state, request)
    finally:
        state.admission.done()
        state.metrics.handshakes_in_flight.dec()
    if isinstance(upgraded, web.StreamResponse):
        return upgraded
    cid, ws = upgraded
    await serve_agent_session(state, request, cid, ws)
    return ws


async def _agent_handshake(state: RelayState, request: web.Request
                           ) -> tuple[str, web.WebSocketResponse] | web.StreamResponse:
    """Verify the assertion and upgrade; (cluster id, websocket) or the answer to send."""
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
    except ConnectionError as exc:
        return upgrade_aborted(state, request, "agent", exc, cluster=cid)
    return cid, ws


async def serve_agent_session(state: RelayState, request: web.Request, cid: str,
                              ws: web.WebSocketResponse) -> None:
    """Run an upgraded agent's session: live in the directory until it ends."""
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


def _reason(session: TunnelSession) -> str:
    return str(getattr(session, "close_reason", "") or "")[:200]


def add_routes(app: web.Application) -> None:
    """Register ``/agent/v1/connect`` on ``app``."""
    app.router.add_get("/agent/v1/connect", agent_connect, allow_head=False)
