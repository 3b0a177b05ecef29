"""Replica-to-replica links: how a stream reaches the replica holding its agent.

Theory of operation. A client stream reaching replica B for a cluster whose
agent session is on replica A is authorised by B as usual; B then finds A in
presence (``Route``: replica id, address, session id) and opens a stream on
its **peer link** to A, a tunnel session (the same protocol and adapter as
agents and clients) over a websocket on A's peer listener. A joins that
stream to its local agent session exactly as it joins a client stream
(``join_streams``), so per-stream credit flow control holds end to end: a
stalled stream holds only its own windows on both hops, never the link's.

- **One link per peer replica**, dialled lazily by :class:`PeerLinks` on the
  first stream for that replica and reused while it lives; a link that dies
  or gets GOAWAY is replaced on the next stream. Dialling is bounded
  (``peering.dial_timeout_seconds``); an address that failed is not dialled
  again for ``DOWN_HOLD_SECONDS``, so a dead replica's routes (present until
  their presence expiry) cost a lookup, not a dial per stream.
- **Mutual TLS.** A's peer listener is a separate port (``peering.listen``)
  whose TLS requires a client certificate signed by the peer CA
  (``peering.ca_file``); B presents its own peer certificate and accepts only
  a server certificate from the same CA. Host names are not checked: the
  address comes from presence, every certificate the peer CA signed is a
  replica of this tier, and pod addresses change with every restart. A
  handshake without a valid certificate is refused by the TLS listener with
  one ``edge closed`` line (relay/tls_server.py).
- **Target.** ``b"<session id> <cluster id>"``: A refuses with
  ``TARGET_UNAVAILABLE`` and a reason starting ``stale route`` unless that
  session is still the cluster's live one there; B then tries the next route.

The relay still parses nothing inside DATA on either replica; kubectl's TLS
runs end to end through both hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import cast

import aiohttp
from aiohttp import web

from certs import CertificateAuthority, IssuedCertificate, server_ssl_context, write_pem_pair
from relay.background import cancel_and_wait
from relay.config import ConfigError, PeeringConfig
from relay.edge_limits import EdgeLimits
from relay.listener import RelayListener
from relay.native_upgrade import NativeRouter
from relay.presence import PresenceDirectory, PresenceUnavailable, Route
from relay.request_view import ErrorAnswer
from relay.router import meter
from relay.state import STATE, RelayState
from tunnel import (
    UPSTREAM_TARGET,
    ErrorCode,
    StreamRefused,
    TunnelClosed,
    TunnelConfig,
    TunnelSession,
    TunnelStream,
    join_streams,
    server_websocket_response,
    ws_connect_kwargs,
)
from tunnel.aio import (
    NativeWebSocket,
    WebSocketHandshakeRefused,
    complete_upgrade,
    dial_websocket,
    read_upgrade,
    refuse_upgrade,
)

log = logging.getLogger("relay")

PEER_CONNECT_PATH = "/peer/v1/connect"
# The reason of every stale-route refusal starts with this.
STALE_ROUTE = "stale route"
# An address whose dial failed is not dialled again for this long (seconds):
# the routes of a killed replica stay in presence until their expiry, and
# each stream meanwhile should cost a lookup, not a dial.
DOWN_HOLD_SECONDS = 1.0
# Codes a peer answers an OPEN with that mean "not there (any more)": the
# next route is tried. Any other refusal (the agent's own) reaches the client.
STALE_CODES = frozenset({ErrorCode.TARGET_UNAVAILABLE, ErrorCode.GOING_AWAY,
                         ErrorCode.REFUSED_STREAM, ErrorCode.OPEN_TIMEOUT})


# What the tunnel core of the far end of a link says when the link's stream
# bound is reached (an agent's refusal is reworded by the far relay instead).
LINK_FULL_REASON = "too many streams"


# Routes that led somewhere are reused this long (seconds) without asking
# presence again: a forwarded stream then costs no Redis round trip. Safe
# because the far replica refuses a stale one and the route is then looked up.
ROUTE_CACHE_SECONDS = 5.0
# Clusters whose routes are remembered (a few hundred bytes each); oldest out.
MAX_CACHED_ROUTES = 10_000


class PeerUnreachable(Exception):
    """A peer link could not be had (dial failed or timed out, held down, at the bound)."""


def peer_target(cluster_id: str, session_id: int) -> bytes:
    """The OPEN target of a forwarded stream."""
    return f"{session_id} {cluster_id}".encode()


def parse_peer_target(target: bytes) -> tuple[int, str] | None:
    """``b"<session id> <cluster id>"`` -> (session id, cluster id), or None."""
    try:
        text = target.decode("utf-8")
    except UnicodeDecodeError:
        return None
    session_id, _, cluster = text.partition(" ")
    if not session_id.isdigit() or not cluster:
        return None
    return int(session_id), cluster


def peer_tunnel_config(base: TunnelConfig, peering: PeeringConfig) -> TunnelConfig:
    """The relay's tunnel settings with the link's stream bound."""
    limits = dataclasses.replace(base.limits, max_concurrent_streams=peering.max_streams_per_link)
    return dataclasses.replace(base, limits=limits)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"peering.{what} {path}: {exc.strerror}; point it at a readable PEM file") from None


def peer_ssl_contexts(peering: PeeringConfig) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts of the peer links: each presents this
    replica's peer certificate and requires one the peer CA signed.

    Raises:
        ConfigError: a file is unreadable or not a matching PEM pair / CA.
    """
    ca = _read(peering.ca_file, "ca_file")
    issued = IssuedCertificate(_read(peering.cert_file, "cert_file"), _read(peering.key_file, "key_file"), b"")
    try:
        server = server_ssl_context(issued, client_ca_pem=ca)
        server.verify_mode = ssl.CERT_REQUIRED
        server.num_tickets = 0
        client = ssl.create_default_context(cadata=ca.decode())
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        # Any certificate of the peer CA is a replica of this tier; the
        # address comes from presence and changes with every pod (docstring).
        client.check_hostname = False
        client.load_cert_chain(peering.cert_file, peering.key_file)
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"peering: cert_file {peering.cert_file} / key_file {peering.key_file} / "
                          f"ca_file {peering.ca_file} are not a matching PEM pair and CA") from None
    return server, client


def issue_peer_files(directory: str | Path, replicas: Sequence[str], *,
                     dns_names: Sequence[str] = ("localhost",),
                     ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
                     listen: tuple[str, int] = ("127.0.0.1", 0)) -> dict[str, PeeringConfig]:
    """A peer CA and one peer certificate per replica under ``directory``
    (``peer-ca.crt``, ``<replica>.crt``/``.key``; the CA's key is not kept):
    what the demo and tests give each replica as its ``peering`` section."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority.create("arc-relay peer CA")
    ca_file = out / "peer-ca.crt"
    ca_file.write_bytes(authority.certificate_pem)
    configs = {}
    for name in replicas:
        issued = authority.issue_peer(name, dns_names, ip_addresses)
        cert_file, key_file = write_pem_pair(out, name, issued)
        configs[name] = PeeringConfig(ca_file=str(ca_file), cert_file=str(cert_file), key_file=str(key_file),
                                      host=listen[0], port=listen[1])
    return configs


# -- replica A: the peer listener ------------------------------------------------------


async def serve_forwarded(state: RelayState, stream: TunnelStream) -> None:
    """``on_stream`` of an inbound peer link: join the stream to the local
    agent session the target names, or refuse it as a stale route."""
    metrics = state.metrics
    parsed = parse_peer_target(stream.target)
    if parsed is None:
        metrics.forwarded.labels("in", "bad_target").inc()
        stream.reject(ErrorCode.NOT_FOUND, "peer target must be '<session id> <cluster id>'")
        return
    session_id, cid = parsed
    directory = state.directory
    agent = directory.get(cid)
    live_id = directory.session_id(agent) if agent is not None and isinstance(directory, PresenceDirectory) else None
    if agent is None or live_id != session_id:
        metrics.forwarded.labels("in", "stale").inc()
        stream.reject(ErrorCode.TARGET_UNAVAILABLE,
                      f"{STALE_ROUTE}: session {session_id} of cluster {cid} is not live on "
                      f"replica {state.presence.replica_id}")
        return
    try:
        upstream = await agent.open_stream(UPSTREAM_TARGET, timeout=state.config.open_timeout_seconds)
    except StreamRefused as exc:
        if exc.code in (ErrorCode.GOING_AWAY, ErrorCode.REFUSED_STREAM):
            metrics.forwarded.labels("in", "stale").inc()
            stream.reject(ErrorCode.TARGET_UNAVAILABLE, f"{STALE_ROUTE}: the agent session of cluster "
                          f"{cid} is going away on replica {state.presence.replica_id}")
        elif exc.code == ErrorCode.TOO_MANY_STREAMS:
            metrics.forwarded.labels("in", "refused").inc()
            stream.reject(ErrorCode.TOO_MANY_STREAMS, f"the agent of cluster {cid} has all its streams "
                          "in use (agent limits.max_concurrent_streams); retry when some close")
        else:
            metrics.forwarded.labels("in", "refused").inc()
            stream.reject(cast(ErrorCode, exc.code), exc.reason or "agent refused the stream")
        return
    except TunnelClosed:
        metrics.forwarded.labels("in", "stale").inc()
        stream.reject(ErrorCode.TARGET_UNAVAILABLE, f"{STALE_ROUTE}: the agent session of cluster "
                      f"{cid} ended on replica {state.presence.replica_id}")
        return
    try:
        stream.accept()
    except Exception:  # the peer gave up while the agent answered
        upstream.reset(ErrorCode.CANCEL, "peer went away")
        return
    metrics.forwarded.labels("in", "forwarded").inc()
    join_streams(stream, upstream,
                 on_a_to_b=meter(metrics.bytes, "client_to_agent", state.recorder),
                 on_b_to_a=meter(metrics.bytes, "agent_to_client", state.recorder))


# The refusals of the peer path, the same on both transports.
NO_PEER_CERTIFICATE = ErrorAnswer(403, "Forbidden", "a peer certificate is required")
SHUTTING_DOWN = ErrorAnswer(503, "ShuttingDown", "relay is shutting down; retry shortly")


def _peer_refusal(state: RelayState, transport: asyncio.BaseTransport | None,
                  remote: str | None) -> ErrorAnswer | None:
    if transport is None or not transport.get_extra_info("peercert"):
        # The TLS listener requires a certificate; this only guards a misconfiguration.
        log.info("peer link refused reason='no peer certificate' peer=%s", remote)
        return NO_PEER_CERTIFICATE
    if not state.accepting:
        return SHUTTING_DOWN
    return None


async def peer_connect(request: web.Request) -> web.StreamResponse:
    """Upgrade an authenticated peer replica and serve its link."""
    state = request.app[STATE]
    peering = request.app[PEERING]
    refusal = _peer_refusal(state, request.transport, request.remote)
    if refusal is not None:
        return refusal.response()
    config = peering.tunnel_config
    ws = server_websocket_response(config)
    try:
        async with asyncio.timeout(config.handshake_timeout or None):
            await ws.prepare(request)
    except (TimeoutError, ConnectionError) as exc:
        log.info("peer link upgrade failed peer=%s error=%s", request.remote, type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        return ws
    session = TunnelSession(ws, is_client=False, config=config, name=f"peer-in:{request.remote}",
                            on_stream=partial(serve_forwarded, state))
    await peering.serve_link(session, "in", str(request.remote))
    return ws


async def serve_peer_native(peering: Peering, ws: NativeWebSocket, transport: asyncio.Transport) -> None:
    """``peer_connect`` on the native websocket (``listener.transport: native``)."""
    state = peering.state
    config = peering.tunnel_config
    peer = transport.get_extra_info("peername")
    remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
    try:
        async with asyncio.timeout(config.handshake_timeout or None):
            request = await read_upgrade(ws)
            if request is None:
                return
            refusal = _peer_refusal(state, transport, remote)
            if refusal is not None:
                refuse_upgrade(ws, refusal.status, refusal.raw_headers(), refusal.body)
                return
            complete_upgrade(ws, request)
    except (TimeoutError, ConnectionError) as exc:
        log.info("peer link upgrade failed peer=%s error=%s", remote, type(exc).__name__)
        transport.abort()
        return
    session = TunnelSession(ws, is_client=False, config=config, name=f"peer-in:{remote}",
                            on_stream=partial(serve_forwarded, state))
    await peering.serve_link(session, "in", str(remote))


class Peering:
    """This replica's peer listener and its links to the other replicas.

    ``start`` binds ``peering.listen`` (``port`` is then the bound port);
    ``links`` dials other replicas on demand; ``stop`` closes both.
    """

    def __init__(self, state: RelayState, peering: PeeringConfig, edge: EdgeLimits) -> None:
        self.state = state
        self.settings = peering
        self.tunnel_config = peer_tunnel_config(state.tunnel_config, peering)
        server_ctx, client_ctx = peer_ssl_contexts(peering)
        self._server_ctx = server_ctx
        self.links = PeerLinks(self, client_ctx)
        self.port = 0
        # The edge guards of the main port; handshakes off the event loop are
        # not worth a pool for a handful of peers.
        self._edge = dataclasses.replace(edge, tls_engine="memorybio", tls_handshake_threads=0)
        self._runner: web.AppRunner | None = None
        self._listener: RelayListener | None = None
        # Links served on the native websocket (listener.transport: native); None: aiohttp's.
        self._native = (NativeRouter(frozenset({PEER_CONNECT_PATH}), partial(serve_peer_native, self),
                                     self.tunnel_config.max_message_size)
                        if edge.transport == "native" else None)
        self.transport = edge.transport
        self.inbound: set[TunnelSession] = set()
        # cluster id -> (reuse until, monotonic; routes), oldest first.
        self._routes: OrderedDict[str, tuple[float, list[Route]]] = OrderedDict()

    async def start(self) -> None:
        """Bind the peer listener.

        Raises:
            ConfigError: the address cannot be bound.
        """
        app = web.Application(client_max_size=4096)
        app[STATE] = self.state
        app[PEERING] = self
        app.router.add_get(PEER_CONNECT_PATH, peer_connect, allow_head=False)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        self._listener = RelayListener(self._runner, self._server_ctx, self._edge, self._native)
        try:
            await self._listener.start(self.settings.host, self.settings.port)
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(f"cannot listen on peering.listen {self.settings.host}:{self.settings.port}: "
                              f"{exc.strerror}; pick a free port in 'peering.listen'") from None
        self.port = self._listener.port
        metrics = self.state.metrics
        metrics.peer_links.labels("out").set_function(lambda: len(self.links.live))
        metrics.peer_links.labels("in").set_function(lambda: len(self.inbound))
        metrics.forwarded_open.labels("out").set_function(
            lambda: sum(s.streams for s in self.links.live.values()))
        metrics.forwarded_open.labels("in").set_function(lambda: sum(s.streams for s in self.inbound))

    async def open_forwarded(self, cid: str) -> TunnelStream | tuple[ErrorCode | int, str] | None:
        """A stream to the agent of ``cid`` on another replica (presence's
        routes, newest session first; a stale one is skipped), the refusal of
        the agent there, or None when no route led anywhere.

        Routes that worked are remembered for ``ROUTE_CACHE_SECONDS``, so
        most forwarded streams cost no presence lookup; a remembered route
        that no longer leads anywhere is forgotten and presence asked again
        (staleness is detected by the far replica, never assumed away)."""
        cached = self._routes.get(cid)
        if cached is not None and cached[0] > self.links.clock():
            result = await self._try_routes(cid, cached[1])
            if result is not None:
                return result
            self._routes.pop(cid, None)
        state = self.state
        try:
            routes = await state.presence.lookup(cid)
        except PresenceUnavailable as exc:
            state.refusals.refused("forward skipped", "-", cid, str(exc))
            return None
        result = await self._try_routes(cid, routes)
        if result is not None:
            self._routes[cid] = (self.links.clock() + ROUTE_CACHE_SECONDS, routes)
            self._routes.move_to_end(cid)
            if len(self._routes) > MAX_CACHED_ROUTES:
                self._routes.popitem(last=False)
        return result

    async def _try_routes(self, cid: str, routes: Sequence[Route]
                          ) -> TunnelStream | tuple[ErrorCode | int, str] | None:
        """Open a stream along the first of ``routes`` that leads somewhere."""
        state = self.state
        metrics = state.metrics
        for route in routes:
            if route.replica_id == state.presence.replica_id:
                continue  # our own: the local directory is the truth for it
            try:
                link = await self.links.get(route.address)
                stream = await link.open_stream(peer_target(cid, route.session_id),
                                                timeout=state.config.open_timeout_seconds)
            except PeerUnreachable as exc:
                metrics.forwarded.labels("out", "unreachable").inc()
                state.refusals.refused("route skipped", route.replica_id, cid, str(exc))
                continue
            except TunnelClosed:
                metrics.forwarded.labels("out", "unreachable").inc()
                continue
            except StreamRefused as exc:
                if exc.code in STALE_CODES:
                    metrics.forwarded.labels("out", "stale").inc()
                    state.refusals.refused("route skipped", route.replica_id, cid,
                                           (exc.reason or str(exc.code))[:160])
                    continue
                metrics.forwarded.labels("out", "refused").inc()
                if exc.code == ErrorCode.TOO_MANY_STREAMS and exc.reason == LINK_FULL_REASON:
                    return exc.code, (f"the peer link to replica {route.replica_id} has all its "
                                      "streams in use (peering.max_streams_per_link); retry when some close")
                return exc.code, exc.reason or "agent refused the stream"
            metrics.forwarded.labels("out", "forwarded").inc()
            return stream
        return None

    async def serve_link(self, session: TunnelSession, direction: str, peer: str) -> None:
        """Run one link (either direction) until it ends, counted and logged."""
        state = self.state
        state.sessions.add(session)  # the relay's drain GOAWAYs it with the rest
        if direction == "in":
            self.inbound.add(session)
        state.metrics.peer_link_events.labels(direction, "up").inc()
        log.info("peer link up direction=%s peer=%s", direction, peer)
        try:
            await session.run()
        finally:
            state.sessions.discard(session)
            self.inbound.discard(session)
            state.metrics.peer_link_events.labels(direction, "down").inc()
            log.info("peer link down direction=%s peer=%s reason=%r", direction, peer,
                     str(session.close_reason or "")[:200])

    async def stop(self) -> None:
        """Close the links and the listener (the relay's drain already GOAWAYed them)."""
        await self.links.close()
        await asyncio.gather(*(s.close() for s in list(self.inbound)), return_exceptions=True)
        if self._native is not None:
            await self._native.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


PEERING = web.AppKey("relay_peering", Peering)


# -- replica B: links to the others --------------------------------------------------------


class PeerLinks:
    """Outbound peer links, one per address, dialled lazily and reused."""

    def __init__(self, peering: Peering, ssl_context: ssl.SSLContext) -> None:
        self._peering = peering
        self._ssl = ssl_context
        self.live: dict[str, TunnelSession] = {}
        self._dialing: dict[str, asyncio.Task[TunnelSession]] = {}
        self._down_until: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self.clock: Callable[[], float] = time.monotonic

    async def get(self, address: str) -> TunnelSession:
        """The live link to ``address``, dialled if there is none (one dial
        per address at a time, shared by every stream waiting for it).

        Raises:
            PeerUnreachable: why there is no link (one line).
        """
        link = self.live.get(address)
        if link is not None and not link.draining:
            return link
        dial = self._dialing.get(address)
        if dial is None:
            if self.clock() < self._down_until.get(address, 0.0):
                raise PeerUnreachable(f"peer {address} failed a dial less than {DOWN_HOLD_SECONDS:g} s ago")
            settings = self._peering.settings
            if address not in self.live and len(self.live) + len(self._dialing) >= settings.max_links:
                raise PeerUnreachable(f"{settings.max_links} peer links are open (peering.max_links)")
            # A task of its own: a stream giving up must not cancel the dial
            # other streams wait for.
            dial = asyncio.ensure_future(self._dial(address))
            self._dialing[address] = dial
            dial.add_done_callback(partial(self._dialed, address))
        return await asyncio.shield(dial)

    def _dialed(self, address: str, dial: asyncio.Future[TunnelSession]) -> None:
        self._dialing.pop(address, None)
        if not dial.cancelled() and dial.exception() is not None:
            now = self.clock()
            # Pods come back under new addresses: forget the holds that passed.
            self._down_until = {a: t for a, t in self._down_until.items() if t > now}
            self._down_until[address] = now + DOWN_HOLD_SECONDS

    async def _dial(self, address: str) -> TunnelSession:
        settings = self._peering.settings
        config = self._peering.tunnel_config
        metrics = self._peering.state.metrics
        ws: aiohttp.ClientWebSocketResponse | NativeWebSocket
        try:
            async with asyncio.timeout(settings.dial_timeout_seconds):
                if self._peering.transport == "native":
                    ws = await dial_websocket(f"wss://{address}{PEER_CONNECT_PATH}", headers={},
                                              ssl_context=self._ssl, config=config)
                else:
                    if self._http is None:
                        self._http = aiohttp.ClientSession(
                            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0))
                    ws = await self._http.ws_connect(f"https://{address}{PEER_CONNECT_PATH}",
                                                     **ws_connect_kwargs(config))
        except TimeoutError:
            metrics.peer_link_events.labels("out", "dial_failed").inc()
            raise PeerUnreachable(f"peer {address} did not answer within "
                                  f"{settings.dial_timeout_seconds:g} s (peering.dial_timeout_seconds)") from None
        except (aiohttp.ClientError, OSError, WebSocketHandshakeRefused) as exc:
            metrics.peer_link_events.labels("out", "dial_failed").inc()
            raise PeerUnreachable(f"peer {address} refused the link: {type(exc).__name__}: "
                                  f"{str(exc)[:160]}") from None
        session = TunnelSession(ws, is_client=True, config=config, name=f"peer-out:{address}")
        self.live[address] = session
        self._down_until.pop(address, None)
        task = asyncio.ensure_future(self._run(address, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session

    async def _run(self, address: str, session: TunnelSession) -> None:
        try:
            await self._peering.serve_link(session, "out", address)
        finally:
            if self.live.get(address) is session:
                del self.live[address]

    async def close(self) -> None:
        """Close every link and the dialling HTTP session."""
        for dial in list(self._dialing.values()):
            with contextlib.suppress(PeerUnreachable):
                await cancel_and_wait(dial)
        await asyncio.gather(*(s.close() for s in list(self.live.values())), return_exceptions=True)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
        if self._http is not None:
            await self._http.close()
            self._http = None
