"""The agent and client connect paths on the native websocket
(``listener.transport: native``): public APIs only, no aiohttp on the hot path.

aiohttp has no public way to hand an upgraded connection over, so the upgrade
is taken before aiohttp sees it: ``relay.edge.HeadGuard`` holds the first
head and gives the connection to a :class:`NativeRouter` when it is a
websocket upgrade GET on ``/agent/v1/connect`` or ``/client/v1/connect``
(the peer listener likewise for ``/peer/v1/connect``: relay/peering.py);
everything else (management API, health, metrics, other requests) goes to
aiohttp as before. The handshake runs the endpoints' own transport-free steps
(relay/agent_endpoint.py, relay/client_endpoint.py: admission, authentication,
refusals and their log lines), bounded as a whole by
``limits.tunnel.handshake_timeout``, then the same session code serves the
websocket as a ``MessageTransport``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from functools import partial

from identity import Principal
from identity.agent_assertion import AGENT_CONNECT_PATH
from relay import agent_endpoint, client_endpoint
from relay.edge import peer_label
from relay.request_view import ErrorAnswer, RequestView
from relay.state import RelayState, admitted, authenticate_view, upgrade_aborted
from tunnel.aio import (
    NativeWebSocket,
    UpgradeRequest,
    adopt_connection,
    complete_upgrade,
    read_upgrade,
    refuse_upgrade,
)

log = logging.getLogger("relay")

CLIENT_CONNECT_PATH = "/client/v1/connect"
CONNECT_PATHS = frozenset({AGENT_CONNECT_PATH, CLIENT_CONNECT_PATH})

ServeNative = Callable[[NativeWebSocket, asyncio.Transport], Awaitable[None]]


def upgrade_path(head: bytes) -> str | None:
    """The path (query aside) when ``head`` (a complete request head) is a
    websocket upgrade GET, else None."""
    first_end = head.find(b"\r\n")
    if first_end < 0 or not head.endswith(b"\r\n\r\n"):
        return None  # only CRLF heads: what the native reader parses
    parts = head[:first_end].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET":
        return None
    for line in head[first_end + 2:].split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"upgrade" and value.strip().lower() == b"websocket":
            return parts[1].split(b"?", 1)[0].decode("latin-1")
    return None


class NativeRouter:
    """A ``relay.edge.UpgradeRouter``: websocket upgrades on ``paths`` are
    served by ``serve`` on a ``NativeWebSocket`` (module docstring).

    Args:
        paths: The upgrade paths taken from aiohttp.
        serve: Runs one adopted connection, from its upgrade request on; the
            connection is closed when it returns.
        max_message_size: The websocket's message bound.
    """

    def __init__(self, paths: frozenset[str], serve: ServeNative, max_message_size: int) -> None:
        self.paths = paths
        self.serve = serve
        self.max_message_size = max_message_size
        self._tasks: set[asyncio.Task[None]] = set()

    def wants(self, head: bytes) -> bool:
        return upgrade_path(head) in self.paths

    def adopt(self, transport: asyncio.Transport, received: bytes) -> None:
        ws = adopt_connection(transport, received, max_message_size=self.max_message_size)
        task = asyncio.get_running_loop().create_task(self._run(ws, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """End the connections still served here (after the sessions' drain)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, ws: NativeWebSocket, transport: asyncio.Transport) -> None:
        try:
            await self.serve(ws, transport)
        except Exception as exc:
            # As relay/unexpected_errors.py for aiohttp's handlers: one ERROR
            # line, the traceback at DEBUG; the connection ends (a websocket
            # may be running on it, so no HTTP answer can follow).
            request_id = secrets.token_hex(8)
            log.error("unexpected error request_id=%s transport=native peer=%s error=%s", request_id,
                      peer_label(transport), type(exc).__name__)
            log.debug("traceback of request_id=%s", request_id, exc_info=True)
            transport.abort()
        finally:
            if not transport.is_closing():
                transport.close()


def connect_router(state: RelayState) -> NativeRouter:
    """The router of the relay's main port: the agent and client connect paths."""
    return NativeRouter(CONNECT_PATHS, partial(serve_connect, state),
                        state.tunnel_config.max_message_size)


async def serve_connect(state: RelayState, ws: NativeWebSocket, transport: asyncio.Transport) -> None:
    """Admit, authenticate and upgrade an agent or a client, then serve its session."""
    upgraded = await _connect_handshake(state, ws, transport)
    if upgraded is None:
        return
    view, endpoint, proved = upgraded
    if endpoint == "agent":
        assert isinstance(proved, tuple)
        await agent_endpoint.serve_agent_session(state, view, proved[0], proved[1], ws)
    else:
        assert isinstance(proved, Principal)
        await client_endpoint.serve_client_session(state, view, proved, ws)


async def _connect_handshake(state: RelayState, ws: NativeWebSocket, transport: asyncio.Transport
                             ) -> tuple[RequestView, str, tuple[str, str] | Principal] | None:
    """Read, admit, authenticate and upgrade; None when refused (answered)."""
    view: RequestView | None = None
    endpoint = "client"
    try:
        async with asyncio.timeout(state.tunnel_config.handshake_timeout or None):
            request = await read_upgrade(ws)
            if request is None:
                return None
            view = RequestView.of_upgrade(request, transport)
            endpoint = "agent" if view.path == AGENT_CONNECT_PATH else "client"
            authenticate: Callable[[], Awaitable[tuple[str, str] | Principal | ErrorAnswer]]
            if endpoint == "agent":
                authenticate = partial(agent_endpoint.authenticate_agent, state, view)
            else:
                authenticate = partial(authenticate_view, state, view, "client")
            result = await admitted(state, endpoint, partial(_upgrade, ws, request, authenticate))
            if isinstance(result, ErrorAnswer):
                refuse_upgrade(ws, result.status, result.raw_headers(), result.body)
                return None
            return view, endpoint, result
    except TimeoutError:
        # Before the 101 (nothing after it is inside the timeout).
        remote = view.remote if view is not None else None
        if endpoint == "agent":
            log.info("agent handshake timed out cluster=- peer=%s", remote)
            answer = agent_endpoint.HANDSHAKE_TIMED_OUT
        else:
            log.info("client handshake timed out peer=%s", remote)
            answer = client_endpoint.HANDSHAKE_TIMED_OUT
        refuse_upgrade(ws, answer.status, answer.raw_headers(), answer.body)
        return None
    except ConnectionError as exc:
        if view is not None:
            upgrade_aborted(state, view, endpoint, exc)
        return None


async def _upgrade(ws: NativeWebSocket, request: UpgradeRequest,
                   authenticate: Callable[[], Awaitable[tuple[str, str] | Principal | ErrorAnswer]]
                   ) -> tuple[str, str] | Principal | ErrorAnswer:
    """Authenticate, then answer 101 (under the admission slot)."""
    proved = await authenticate()
    if not isinstance(proved, ErrorAnswer):
        complete_upgrade(ws, request)
    return proved
