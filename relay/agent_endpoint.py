"""``GET /agent/v1/connect``: where agents dial in.

The agent sends ``Authorization: Bearer <assertion>`` (identity.agent_assertion);
the relay verifies it against the certificate registered for the cluster the
assertion claims, then runs a tunnel session. One live session per cluster: a
newer authenticated connection replaces the old one, which gets GOAWAY and
drains its streams.

Metadata: the agent opens a stream with target ``b"control"`` and writes JSON
objects, one per line (``{"agentVersion", "kubernetesVersion", "totalNodeCount",
"totalCoreCount"}``, all optional); the relay stores each in the registry. The
relay writes one line the other way, only when it stops: ``{"reconnect": ...}``
(relay/drain.py): the agent dials a new session, then sends GOAWAY on this one.
An agent's GOAWAY takes its session out of the directory (and presence) at once,
so new streams go to the agent's newer session, here or on another replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import cache, lru_cache, partial

from aiohttp import web

from certs import fingerprint_sha256, generate_key_pair
from identity import TokenInvalid
from identity.agent_assertion import AGENT_CONNECT_PATH, unverified_cluster_id
from relay.drain import ask_to_reconnect
from relay.names import validate_agent_metadata
from relay.request_view import ErrorAnswer, RequestView
from relay.state import (
    STATE,
    RelayState,
    admitted,
    bearer_token,
    upgrade_aborted,
    upgrade_timed_out,
)
from tunnel import (
    CONTROL_TARGET,
    ErrorCode,
    StreamReset,
    TunnelClosed,
    TunnelSession,
    TunnelStream,
    server_websocket_response,
)
from tunnel.aio import MessageTransport

log = logging.getLogger("relay")

# Close code and GOAWAY reason when the key an agent session proved is no
# longer the cluster's registered key.
WS_POLICY_VIOLATION = 1008
KEY_CHANGED_REASON = "agent key changed: reconnect with the newly registered key"
# Every refusal after the cluster lookup takes at least this long: well above
# the cost of any verification (~0.1-1 ms), so its timing says nothing about
# the registered key; short enough to cost an honest agent nothing.
REFUSAL_FLOOR_SECONDS = 0.01
# A metadata line is a few hundred bytes; anything longer is not ours.
MAX_CONTROL_LINE = 4096
# Fingerprints of registered agent certificates remembered (one per cluster
# connecting; ~200 bytes each): a connect parsed and hashed its certificate twice.
MAX_CACHED_FINGERPRINTS = 10_000


# What every refusal after the cluster lookup says, whatever the cause (unknown
# cluster, another key, wrong key type, expired, replayed): an unauthenticated
# caller must not learn which clusters exist or what key they have. The cause
# goes to the relay log only.
NOT_ACCEPTED = "assertion not accepted"


def _refuse(state: RelayState, request: RequestView, reason: str, claimed: str | None,
            *, public_reason: str | None = None) -> ErrorAnswer:
    """401 for a refused agent. ``reason`` is logged; the response and the
    metric label carry ``public_reason`` (default: ``reason``)."""
    shown = public_reason or reason
    state.metrics.auth_failures.labels("agent", shown).inc()
    log.info("agent refused reason=%r claimed_cluster=%r peer=%s", reason,
             (claimed or "")[:160], request.remote)
    return ErrorAnswer(401, "InvalidAssertion", f"agent refused: {shown}",
                       {"WWW-Authenticate": 'Bearer error="invalid_token"'})


@lru_cache(maxsize=MAX_CACHED_FINGERPRINTS)
def _fingerprint(certificate_pem: bytes) -> str:
    return fingerprint_sha256(certificate_pem)


@cache
def _decoy_certificate() -> bytes:
    """A certificate no agent holds the key of: an assertion for an unknown
    cluster is verified against it, so that refusal costs what a wrong-key
    refusal costs (no timing oracle for which clusters exist)."""
    return generate_key_pair("decoy").certificate_pem


async def control_stream(state: RelayState, cid: str, stream: TunnelStream) -> None:
    """``on_stream`` of an agent session: accept only the control stream and
    store each metadata line it carries."""
    if stream.target != CONTROL_TARGET:
        stream.reject(ErrorCode.NOT_FOUND, "agents may open only the 'control' stream")
        return
    stream.accept()
    state.control_streams.add(stream)
    if state.moving_agents:  # connected just before the stop: ask it too
        state.spawn(ask_to_reconnect(stream, state.config.agent_move_seconds))
    buffer = b""
    try:
        while chunk := await stream.read(MAX_CONTROL_LINE):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                await _store_metadata(state, cid, line)
            if len(buffer) > MAX_CONTROL_LINE:
                stream.reset(ErrorCode.PROTOCOL_ERROR, "control line too long")
                return
    except (StreamReset, TunnelClosed):
        return
    finally:
        state.control_streams.discard(stream)
        await stream.aclose()


async def _store_metadata(state: RelayState, cid: str, line: bytes) -> None:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # a 4 KiB line of '[' is not JSON we take
        log.info("agent metadata ignored cluster=%s reason='not JSON'", cid)
        return
    if isinstance(data, dict):
        data, problems = validate_agent_metadata(data)
        if problems:
            log.info("agent metadata refused fields cluster=%s problems=%r", cid, problems)
        await state.registry.set_metadata(cid, data)
        # DEBUG: every agent reports on connect and every few minutes (thousands
        # of lines an hour on a large relay); `arcctl show` has the values.
        log.debug("agent metadata cluster=%s agentVersion=%s kubernetesVersion=%s nodes=%s cores=%s",
                 cid, data.get("agentVersion"), data.get("kubernetesVersion"),
                 data.get("totalNodeCount"), data.get("totalCoreCount"))


# What a handshake that outlived ``limits.tunnel.handshake_timeout`` answers.
HANDSHAKE_TIMED_OUT = ErrorAnswer(504, "HandshakeTimeout", "websocket handshake timed out")


async def agent_connect(request: web.Request) -> web.StreamResponse:
    """Admit, authenticate and upgrade an agent, then serve its tunnel session."""
    state = request.app[STATE]
    view = RequestView.of_aiohttp(request)
    upgraded = await admitted(state, "agent", partial(_agent_handshake, state, request, view))
    if isinstance(upgraded, ErrorAnswer):
        return upgraded.response()
    if isinstance(upgraded, web.StreamResponse):
        return upgraded
    cid, fingerprint, ws = upgraded
    await serve_agent_session(state, view, cid, fingerprint, ws)
    return ws


async def _agent_handshake(state: RelayState, request: web.Request, view: RequestView
                           ) -> tuple[str, str, web.WebSocketResponse] | web.StreamResponse:
    """Verify the assertion and upgrade; (cluster id, fingerprint of the key it
    proved, websocket) or the answer to send."""
    proved = await authenticate_agent(state, view)
    if isinstance(proved, ErrorAnswer):
        return proved.response()
    cid, fingerprint = proved
    ws = server_websocket_response(state.tunnel_config)
    try:
        # A peer that stalls the upgrade must not hold a handler forever.
        async with asyncio.timeout(state.tunnel_config.handshake_timeout or None):
            await ws.prepare(request)
    except TimeoutError:
        log.info("agent handshake timed out cluster=%s peer=%s", cid, view.remote)
        return upgrade_timed_out(request, ws, HANDSHAKE_TIMED_OUT)
    except ConnectionError as exc:
        return upgrade_aborted(state, view, "agent", exc, cluster=cid)
    return cid, fingerprint, ws


async def authenticate_agent(state: RelayState, request: RequestView) -> tuple[str, str] | ErrorAnswer:
    """Verify the agent's assertion: (cluster id, fingerprint of the key it
    proved) or the 401 to send (logged and counted)."""
    token = bearer_token(request)
    if token is None:
        return _refuse(state, request, "missing assertion", None)
    try:
        claimed = unverified_cluster_id(token)
    except TokenInvalid as exc:  # before any lookup: says nothing about clusters
        return _refuse(state, request, exc.reason, None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    registered = await state.registry.agent_certificate(claimed)
    certificate = registered.encode() if registered is not None else _decoy_certificate()
    try:
        cid = state.verifier.verify(token, certificate)
        if registered is None:  # only whoever holds the decoy's private key gets here: nobody
            raise TokenInvalid("unknown cluster")
    except TokenInvalid as exc:
        # Verification cost differs by key type (an algorithm mismatch needs no
        # crypto at all); a fixed floor hides that, and so which key is registered.
        await asyncio.sleep(max(0.0, started + REFUSAL_FLOOR_SECONDS - loop.time()))
        reason = exc.reason if registered is not None else "unknown cluster"
        return _refuse(state, request, reason, claimed, public_reason=NOT_ACCEPTED)
    return cid, _fingerprint(certificate)


async def serve_agent_session(state: RelayState, request: RequestView, cid: str,
                              fingerprint: str, ws: web.WebSocketResponse | MessageTransport) -> None:
    """Run an upgraded agent's session: live in the directory until it ends."""
    session = TunnelSession(ws, is_client=False, config=state.tunnel_config, name=f"agent:{cid}",
                            on_stream=partial(control_stream, state, cid))
    current = await state.registry.agent_certificate(cid)
    if current is None or _fingerprint(current.encode()) != fingerprint:
        # The key changed (or the cluster went) while this agent was upgrading:
        # the key it proved is no longer the registered one.
        log.info("agent refused after upgrade cluster=%s reason='agent key changed' peer=%s",
                 cid, request.remote)
        await session.transport.close(WS_POLICY_VIOLATION, b"agent key changed")
        return
    state.agent_fingerprints[session] = (cid, fingerprint)
    state.sessions.add(session)
    state.metrics.sessions.labels("agent").inc()
    state.metrics.sessions_total.labels("agent").inc()
    previous = state.directory.register(cid, session)
    await state.registry.set_connectivity(cid, "Connected")
    log.info("agent connected cluster=%s peer=%s replaced=%s", cid, request.remote, previous is not None)
    state.central_rbac_changed()  # its central role list goes out now
    if previous is not None:
        # The old session drains its streams; new streams go to this one.
        state.spawn(previous.goaway())
    state.spawn(_leave_directory_on_goaway(state, cid, session))
    try:
        await session.run()
    finally:
        state.sessions.discard(session)
        state.agent_fingerprints.pop(session, None)
        state.metrics.sessions.labels("agent").dec()
        if state.directory.unregister(cid, session):
            await state.registry.set_connectivity(cid, "Offline")
        log.info("agent disconnected cluster=%s reason=%r", cid, _reason(session))


async def _leave_directory_on_goaway(state: RelayState, cid: str, session: TunnelSession) -> None:
    """When the agent sends GOAWAY (its newer session is up, maybe on another
    replica: relay/drain.py, or it is stopping), stop routing new streams here
    at once; its open streams finish. The status shown is derived from live
    sessions (relay/status.py), so recording the disconnect now is safe."""
    goaway = asyncio.ensure_future(session.wait_goaway_received())
    closed = asyncio.ensure_future(session.wait_closed())
    try:
        await asyncio.wait({goaway, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        goaway.cancel()
        closed.cancel()
    if session.goaway_received and state.directory.unregister(cid, session):
        await state.registry.set_connectivity(cid, "Offline")
        log.info("agent sent GOAWAY cluster=%s: new streams wait for its next session", cid)


async def end_sessions_of_old_key(state: RelayState, cid: str, new_fingerprint: str) -> int:
    """End every agent session of ``cid`` that authenticated with a key other
    than ``new_fingerprint`` (the cluster's agent key was changed): GOAWAY with
    the reason, then close, so its streams end and new ones wait for an agent
    holding the new key. Returns how many sessions were ended."""
    stale = [s for s, (c, fp) in list(state.agent_fingerprints.items())
             if c == cid and fp != new_fingerprint]
    for session in stale:
        state.agent_fingerprints.pop(session, None)
        if state.directory.unregister(cid, session):
            await state.registry.set_connectivity(cid, "Offline")
    await asyncio.gather(*(s.close(ErrorCode.FORBIDDEN, KEY_CHANGED_REASON) for s in stale),
                         return_exceptions=True)
    return len(stale)


def _reason(session: TunnelSession) -> str:
    return str(getattr(session, "close_reason", "") or "")[:200]


def add_routes(app: web.Application) -> None:
    """Register ``/agent/v1/connect`` on ``app``."""
    _decoy_certificate()  # made now, so the first unknown-cluster refusal is not slower
    app.router.add_get(AGENT_CONNECT_PATH, agent_connect, allow_head=False)
