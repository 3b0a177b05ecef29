"""``GET /client/v1/connect``: where ``arc-proxy`` dials in.

The OIDC bearer is validated before the websocket upgrade (401 otherwise).
Each stream OPEN names a cluster ``<rg>/<name>`` and is routed by
``relay.router.route_stream``. When the token expires the session gets GOAWAY
and its open streams are reset (``relay.revocation``: a stream lives no longer
than its credential); the client reconnects with a fresh token for new ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from aiohttp import web

from identity import Principal
from relay.request_view import ErrorAnswer, RequestView
from relay.router import route_stream
from relay.state import (
    STATE,
    RelayState,
    admitted,
    authenticate_view,
    upgrade_aborted,
    upgrade_timed_out,
)
from tunnel import TunnelSession, server_websocket_response
from tunnel.aio import MessageTransport

log = logging.getLogger("relay")

# What a handshake that outlived ``limits.tunnel.handshake_timeout`` answers.
HANDSHAKE_TIMED_OUT = ErrorAnswer(504, "HandshakeTimeout", "authentication or handshake timed out")


async def client_connect(request: web.Request) -> web.StreamResponse:
    """Admit, authenticate and upgrade a client, then serve its tunnel session."""
    state = request.app[STATE]
    view = RequestView.of_aiohttp(request)
    upgraded = await admitted(state, "client", partial(_client_handshake, state, request, view))
    if isinstance(upgraded, ErrorAnswer):
        return upgraded.response()
    if isinstance(upgraded, web.StreamResponse):
        return upgraded
    principal, ws = upgraded
    await serve_client_session(state, view, principal, ws)
    return ws


async def _client_handshake(state: RelayState, request: web.Request, view: RequestView
                            ) -> tuple[Principal, web.WebSocketResponse] | web.StreamResponse:
    """Validate the bearer and upgrade; (principal, websocket) or the answer to send."""
    ws = server_websocket_response(state.tunnel_config)
    try:
        # Authentication plus the upgrade, bounded: a stalling peer must not
        # hold a handler forever.
        async with asyncio.timeout(state.tunnel_config.handshake_timeout or None):
            principal = await authenticate_view(state, view, "client")
            if isinstance(principal, ErrorAnswer):
                return principal.response()
            await ws.prepare(request)
    except TimeoutError:
        log.info("client handshake timed out peer=%s", view.remote)
        return upgrade_timed_out(request, ws, HANDSHAKE_TIMED_OUT)
    except ConnectionError as exc:
        return upgrade_aborted(state, view, "client", exc)
    return principal, ws


async def serve_client_session(state: RelayState, request: RequestView, principal: Principal,
                               ws: web.WebSocketResponse | MessageTransport) -> None:
    """Run an upgraded client's session until it ends (GOAWAY at token expiry)."""
    handler = partial(route_stream, state, principal, recorder=state.recorder,
                      share=state.shares.new_session())
    session = TunnelSession(ws, is_client=False, config=state.tunnel_config,
                            name=f"client:{principal.name}", on_stream=handler)
    state.sessions.add(session)
    state.client_sessions.add(session)
    state.metrics.sessions.labels("client").inc()
    state.metrics.sessions_total.labels("client").inc()
    log.info("client connected principal=%s issuer=%s peer=%s", principal.name, principal.issuer,
             request.remote)
    loop = asyncio.get_running_loop()
    expiry = loop.call_later(max(0.0, principal.expires_at - time.time()),
                             lambda: state.spawn(session.goaway()))
    try:
        await session.run()
    finally:
        expiry.cancel()
        state.sessions.discard(session)
        state.client_sessions.discard(session)
        state.metrics.sessions.labels("client").dec()
        log.info("client disconnected principal=%s reason=%r", principal.name,
                 str(getattr(session, "close_reason", "") or "")[:200])


def add_routes(app: web.Application) -> None:
    """Register ``/client/v1/connect`` on ``app``."""
    app.router.add_get("/client/v1/connect", client_connect, allow_head=False)
