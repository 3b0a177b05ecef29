"""The agent connector: dial out to the relay, keep a tunnel session up, and
pipe every stream the relay opens to a local TCP target (kube-aad-proxy, or
``forward_to``).

Theory of operation: one dial loop. Each dial signs a fresh assertion and opens
``wss://relay/agent/v1/connect``; the session then runs in its own task. When
the relay sends GOAWAY (shutdown, or a newer session of ours replaced this one)
the loop dials again at once while the old session drains its streams (unless
the session was only seconds old: then another agent probably replaced it, and the loop
backs off from 1 s to 30 s so two agents do not evict each other in a loop). When a
session ends or a dial fails the loop sleeps an exponential backoff with full
jitter (a delay drawn in [0, ceiling], the ceiling 100 ms doubling to 2 s; at
most 0.5 s during the 30 s after losing a session while nothing listens at the
relay's address, the usual cause being a relay restart: a refused TCP connect
costs the relay nothing, whereas a relay that is up but closes connections at
accept (its pre-authentication bound is full) pays for every redial, so those
back off to the usual 2 s), reset once a session has been up for
``stable_after`` seconds.
A relay whose admission is full answers 503 with ``Retry-After``: the loop
then waits that hint plus up to a second (``retry_after_delay``); the relay
gives each refused agent its own slot, so a fleet redialling after a relay
restart spreads itself over the relay's pace.

A dial waits up to ``dial_timeout`` (default twice the tunnel's handshake
timeout): the relay bounds its own side of a handshake by the handshake
timeout, so an agent never abandons a session the relay is about to finish
(an abandoned one costs the relay a set-up for nothing, in a storm thousands).

Metadata goes up a stream with target ``b"control"``: one JSON object per line,
on connect and every ``metadata_interval`` seconds. The relay writes one line
down that stream when it stops (relay/drain.py), ``{"reconnect": ...}``: the
loop then dials a new session (behind a load balancer: another replica) while
the current one keeps serving new streams, and sends GOAWAY on the old one only
once the new one is up (make-before-break); the old one's streams finish.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent.connector_dial import (
    agent_audience,
    agent_connect_url,
    dial_relay,
    relay_not_listening,
    relay_ssl_context,
    resolve_proxy,
)
from agent.connector_metadata import MetadataSource, static_metadata
from identity import TokenInvalid, sign_agent_assertion
from tunnel import (
    CONTROL_TARGET,
    UPSTREAM_TARGET,
    Backoff,
    ErrorCode,
    StreamRefused,
    StreamReset,
    TunnelClosed,
    TunnelConfig,
    TunnelSession,
    TunnelStream,
    retry_after_delay,
    retry_after_seconds,
    splice,
)

log = logging.getLogger("agent")

StreamHandler = Callable[[TunnelStream], Awaitable[None]]

# kube-aad-proxy is on loopback: a connect that takes longer is a dead process.
UPSTREAM_CONNECT_TIMEOUT = 5.0
# A refused assertion will not fix itself quickly; back off longer than for
# network errors, but keep trying (the cluster may be re-registered).
AUTH_FAILURE_CAP = 30.0
# For this long after losing an established session, redial at most every
# FAST_CAP seconds instead of the usual 2 s cap: the usual cause is a relay
# restart, and the relay being back should mean the cluster is back within
# ~0.5 s (the e2e goal is a working kubectl call within 2 s). A refused TCP
# connect every 0.25-0.5 s for half a minute costs the relay nothing.
FAST_WINDOW = 30.0
FAST_CAP = 0.5
# A GOAWAY within this many seconds of connecting counts as being replaced by
# another agent; the first delay after one is CHURN_INITIAL (then doubling).
CHURN_WINDOW = 3.0
CHURN_INITIAL = 1.0
# On stop, how long open streams may finish after our GOAWAY before the
# session is closed (a pod gets 30 s between SIGTERM and SIGKILL by default).
STOP_DRAIN = 10.0
# Statuses that mean "the relay is busy, come back later" (with Retry-After).
BUSY_STATUSES = (429, 503)
# A line the relay writes on the control stream is a few dozen bytes.
MAX_CONTROL_LINE = 4096


def asks_to_reconnect(line: bytes) -> bool:
    """Whether a control line from the relay asks us to move to a new session."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and "reconnect" in message


def goaway_received(session: TunnelSession) -> bool:
    """Whether the relay sent GOAWAY on ``session``."""
    return session.goaway_received


@dataclass(frozen=True)
class ConnectorConfig:
    """What the connector needs (``arc-agent`` builds it from ``AgentConfig``).

    Attributes:
        relay_url: relay base URL, ``https://host[:port]`` (``wss://`` accepted).
        cluster_id: ``<resourceGroup>/<name>``.
        private_key_pem: the agent's key; signs each assertion.
        relay_ca_pem: CA of the relay's certificate (None: system store).
        proxy_https / proxy_http / no_proxy / proxy_ca_pem: outbound proxy
            (None: the standard environment variables).
        upstream: (host, port) each stream is piped to.
        tunnel: tunnel limits and timeouts.
        metadata_interval: seconds between metadata reports.
        backoff_initial / backoff_cap / stable_after: reconnect policy.
        dial_timeout: bound of one dial (TCP, TLS, upgrade); None: twice
            ``tunnel.handshake_timeout`` (see module docstring).
    """

    relay_url: str
    cluster_id: str
    private_key_pem: bytes
    upstream: tuple[str, int]
    relay_ca_pem: bytes | None = None
    proxy_https: str | None = None
    proxy_http: str | None = None
    no_proxy: str | None = None
    proxy_ca_pem: bytes | None = None
    tunnel: TunnelConfig = field(default_factory=TunnelConfig)
    metadata_interval: float = 300.0
    backoff_initial: float = 0.1
    backoff_cap: float = 2.0
    stable_after: float = 10.0
    assertion_lifetime: int = 120
    dial_timeout: float | None = None

    @property
    def effective_dial_timeout(self) -> float | None:
        """The dial bound in seconds (None: unbounded)."""
        if self.dial_timeout is not None:
            return self.dial_timeout or None
        return 2 * self.tunnel.handshake_timeout or None


class Connector:
    """Keeps one tunnel session to the relay and serves its streams.

    Call ``await run()`` (returns after ``stop()``); ``wait_connected()`` lets
    a caller wait for the first (or next) session.
    """

    def __init__(self, config: ConnectorConfig, *, metadata: MetadataSource | None = None,
                 stream_handlers: Mapping[bytes, StreamHandler] | None = None) -> None:
        self.config = config
        # Relay-opened streams with these targets are served here, not piped
        # upstream (``central-rbac``: agent/central_rbac.py).
        self.stream_handlers = dict(stream_handlers or {})
        self.metadata = metadata or static_metadata()
        self.session: TunnelSession | None = None
        self.sessions_started = 0
        self.last_error = ""
        # Why the last dial failed: the relay refused the agent, or is busy
        # (then with its Retry-After hint in seconds).
        self._auth_refused = False
        self._retry_after: float | None = None
        # The last dial found nothing listening (see relay_not_listening).
        self._relay_not_listening = False
        self.busy_refusals = 0
        # Dials that failed, and relay-opened streams by outcome (agent/health.py).
        self.dial_failures = 0
        self.streams: collections.Counter[str] = collections.Counter()
        # The last delay the dial loop chose after a failed dial (seconds).
        self.last_delay = 0.0
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        # Set per session when the relay asks us to reconnect (it is stopping).
        self._move_asked: dict[TunnelSession, asyncio.Event] = {}
        # Each session's metadata reporter (ended early when the session is left).
        self._reporters: dict[TunnelSession, asyncio.Task[None]] = {}
        # Sessions moved away from, by the number of the session replacing them.
        self.moves = 0

    @property
    def connected(self) -> bool:
        """True while a session is up and not draining."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a live session; True if there is one."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Leave the dial loop: GOAWAY the live session, let its streams finish
        (at most ``STOP_DRAIN`` seconds), then close. ``run()`` returns after."""
        self._stopping.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self) -> None:
        """The dial loop; returns after ``stop()`` once sessions are closed."""
        cfg = self.config
        connector = aiohttp.TCPConnector(limit=0, ssl=relay_ssl_context(cfg.relay_ca_pem, cfg.proxy_ca_pem))
        self._http = aiohttp.ClientSession(connector=connector)
        backoff = Backoff(cfg.backoff_initial, cfg.backoff_cap)
        auth_backoff = Backoff(cfg.backoff_initial, AUTH_FAILURE_CAP)
        churn_backoff = Backoff(CHURN_INITIAL, AUTH_FAILURE_CAP)
        loop = asyncio.get_running_loop()
        lost_at: float | None = None  # when the last established session ended
        # The session the relay asked us to leave; it serves until the next is up.
        superseded: TunnelSession | None = None
        try:
            while not self._stopping.is_set():
                session = await self._dial()
                if session is not None and superseded is not None:
                    if not superseded.draining:  # else the relay's bound came first
                        self._supersede(superseded)
                    superseded = None
                if session is None:
                    if superseded is not None and superseded.closed:
                        superseded = None
                    if self._retry_after is not None:
                        self.last_delay = retry_after_delay(self._retry_after)
                    elif self._auth_refused:
                        self.last_delay = auth_backoff.next_delay()
                    else:
                        recently_lost = lost_at is not None and loop.time() - lost_at < FAST_WINDOW
                        fast = recently_lost and self._relay_not_listening
                        moving = superseded is not None
                        self.last_delay = backoff.next_delay(FAST_CAP if fast or moving else None)
                    await self._sleep(self.last_delay)
                    continue
                auth_backoff.reset()
                started = loop.time()
                run_task = self._spawn(self._serve(session))
                outcome = await self._watch(session, run_task)
                if outcome == "move":
                    superseded = session  # serving on until the next session is up
                    continue
                ended_by_goaway = outcome == "goaway"
                lost_at = loop.time()
                lived = lost_at - started
                if lived >= cfg.stable_after:
                    backoff.reset()
                    churn_backoff.reset()
                if not ended_by_goaway:
                    await self._sleep(backoff.next_delay())
                elif lived < CHURN_WINDOW:
                    # GOAWAY soon after connecting: most likely another agent
                    # for this cluster replaced us (e.g. two pods during a
                    # rolling update). Redialling at once would make the two
                    # replace each other in a tight loop; slow down instead.
                    await self._sleep(churn_backoff.next_delay())
        finally:
            await self._shutdown()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _dial(self) -> TunnelSession | None:
        cfg = self.config
        assert self._http is not None
        self._auth_refused = False
        self._retry_after = None
        self._relay_not_listening = False
        try:
            token = sign_agent_assertion(cfg.private_key_pem, cluster_id=cfg.cluster_id,
                                         audience=agent_audience(cfg.relay_url),
                                         lifetime=cfg.assertion_lifetime)
        except TokenInvalid as exc:
            self.last_error = f"cannot sign assertion: {exc.reason}"
            log.error("agent %s", self.last_error)
            return None
        url = agent_connect_url(cfg.relay_url)
        proxy = resolve_proxy(cfg.relay_url, cfg.proxy_https, cfg.proxy_http, cfg.no_proxy)
        try:
            async with asyncio.timeout(cfg.effective_dial_timeout):
                ws = await dial_relay(self._http, url, token, proxy, cfg.tunnel, cfg.relay_ca_pem,
                                      cfg.proxy_ca_pem)
        except aiohttp.WSServerHandshakeError as exc:
            hint = retry_after_seconds(exc.headers) if exc.status in BUSY_STATUSES else None
            if exc.status in (401, 403):
                self._auth_refused = True
                self._dial_failed(url, f"relay refused the agent ({exc.status}): "
                                       "check the cluster registration and agent key")
            elif hint is not None:
                self._retry_after = hint
                self.busy_refusals += 1
                # Expected during a reconnect storm: INFO, not WARNING.
                self._dial_failed(url, f"relay busy ({exc.status}), retrying after about {hint:g} s",
                                  level=logging.INFO)
            else:
                self._dial_failed(url, f"relay answered {exc.status} to the websocket upgrade")
            return None
        except (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError):
            self._dial_failed(url, "relay TLS certificate not trusted: set relay.ca_file to its CA")
            return None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._relay_not_listening = relay_not_listening(exc)
            self._dial_failed(url, f"cannot reach relay: {type(exc).__name__}")
            return None
        self.sessions_started += 1
        self.last_error = ""
        session = TunnelSession(ws, is_client=True, config=cfg.tunnel, name=f"agent:{cfg.cluster_id}",
                                on_stream=self._on_stream)
        self.session = session
        log.info("agent connected relay=%s cluster=%s proxy=%s transport=%s", cfg.relay_url, cfg.cluster_id,
                 "yes" if proxy else "no", cfg.tunnel.transport)
        return session

    def _dial_failed(self, url: str, error: str, level: int = logging.WARNING) -> None:
        # While the relay is down the loop retries every few hundred ms; log
        # a failure once per distinct cause, not once per attempt.
        self.dial_failures += 1
        level = logging.DEBUG if error == self.last_error else level
        self.last_error = error
        log.log(level, "agent dial failed url=%s error=%r", url, error)

    async def _serve(self, session: TunnelSession) -> None:
        move_asked = self._move_asked.setdefault(session, asyncio.Event())
        reporter = self._reporters[session] = self._spawn(self._report_metadata(session, move_asked))
        try:
            await session.run()
        finally:
            reporter.cancel()
            self._move_asked.pop(session, None)
            self._reporters.pop(session, None)
            log.info("agent session ended cluster=%s reason=%r", self.config.cluster_id, session.close_reason)

    def _supersede(self, old: TunnelSession) -> None:
        """The session replacing ``old`` is up: GOAWAY ``old`` (its open
        streams finish; the relay routes new ones to the new session)."""
        self.moves += 1
        log.info("agent new session is up cluster=%s: the previous one takes no new streams "
                 "and drains %d open stream(s)", self.config.cluster_id, old.streams)
        self._spawn(self._goaway_quietly(old))
        reporter = self._reporters.get(old)
        if reporter is not None:
            reporter.cancel()  # its control stream must not keep the old session open

    @staticmethod
    async def _goaway_quietly(session: TunnelSession) -> None:
        with contextlib.suppress(TunnelClosed):
            await session.goaway()

    async def _watch(self, session: TunnelSession, run_task: asyncio.Task[None]) -> str:
        """Wait until the session ends, a GOAWAY arrives, the relay asks us to
        move, or ``stop()``.

        Returns:
            ``"goaway"`` (the relay sent GOAWAY: redial at once), ``"move"``
            (dial a new session; this one serves until it is up), or
            ``"ended"`` (the session ended, or ``stop()``).
        """
        self._connected.set()
        move_asked = self._move_asked.setdefault(session, asyncio.Event())
        goaway = asyncio.ensure_future(session.wait_goaway_received())
        stopping = asyncio.ensure_future(self._stopping.wait())
        move = asyncio.ensure_future(move_asked.wait())
        outcome = "ended"
        try:
            await asyncio.wait({run_task, goaway, stopping, move}, return_when=asyncio.FIRST_COMPLETED)
            if goaway_received(session):
                log.info("agent got GOAWAY cluster=%s: redialling while streams drain",
                         self.config.cluster_id)
                outcome = "goaway"
            elif self._stopping.is_set():
                if not run_task.done():
                    await session.goaway()
            elif move_asked.is_set() and not run_task.done():
                log.info("agent asked to reconnect cluster=%s: dialling a new session while this "
                         "one keeps serving", self.config.cluster_id)
                outcome = "move"
            return outcome
        finally:
            goaway.cancel()
            stopping.cancel()
            move.cancel()
            if outcome != "move":  # a session being moved from still serves
                self._connected.clear()
                # On stop the session stays referenced so _shutdown can drain it.
                if self.session is session and not self._stopping.is_set():
                    self.session = None

    async def _until_goaway_or_stop(self, session: TunnelSession, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a GOAWAY, the session's end or ``stop()``."""
        waits = {
            asyncio.ensure_future(session.wait_goaway_received()),
            asyncio.ensure_future(session.wait_closed()),
            asyncio.ensure_future(self._stopping.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=max(timeout, 0.0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _read_control(self, stream: TunnelStream, move_asked: asyncio.Event) -> None:
        """Read the relay's lines on the control stream; set ``move_asked``
        on a reconnect request."""
        buffer = b""
        with contextlib.suppress(StreamReset, TunnelClosed):
            while chunk := await stream.read(MAX_CONTROL_LINE):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if asks_to_reconnect(line):
                        move_asked.set()
                if len(buffer) > MAX_CONTROL_LINE:
                    log.warning("agent ignores the relay's control stream: line too long")
                    return

    async def _report_metadata(self, session: TunnelSession, move_asked: asyncio.Event) -> None:
        """Open the control stream and send metadata now and every interval
        (reading the relay's requests meanwhile); close it on GOAWAY so the
        old session can drain."""
        stream: TunnelStream | None = None
        reader: asyncio.Task[None] | None = None
        try:
            stream = await session.open_stream(CONTROL_TARGET)
            reader = self._spawn(self._read_control(stream, move_asked))
            loop = asyncio.get_running_loop()
            next_report = 0.0
            while not (session.closed or goaway_received(session) or self._stopping.is_set()):
                if loop.time() >= next_report:
                    data = await self.metadata()
                    await stream.write(json.dumps(data, separators=(",", ":")).encode() + b"\n")
                    next_report = loop.time() + self.config.metadata_interval
                await self._until_goaway_or_stop(session, next_report - loop.time())
        except (StreamRefused, StreamReset, TunnelClosed) as exc:
            log.info("agent metadata stream ended reason=%r", getattr(exc, "reason", str(exc)))
        finally:
            if reader is not None:
                reader.cancel()
            if stream is not None:
                with contextlib.suppress(StreamReset, TunnelClosed):
                    await stream.write_eof()
                await stream.aclose()

    async def _on_stream(self, stream: TunnelStream) -> None:
        """Pipe one relay-opened stream to the upstream TCP target."""
        handler = self.stream_handlers.get(stream.target)
        if handler is not None:
            await handler(stream)
            return
        if stream.target != UPSTREAM_TARGET:
            self.streams["unknown_target"] += 1
            stream.reject(ErrorCode.NOT_FOUND, "unknown target")
            return
        host, port = self.config.upstream
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    UPSTREAM_CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.warning("agent upstream connect failed target=%s:%d error=%s", host, port,
                        type(exc).__name__)
            self.streams["upstream_failed"] += 1
            stream.reject(ErrorCode.CONNECT_FAILED, "agent cannot reach kube-aad-proxy")
            return
        self.streams["accepted"] += 1
        stream.accept()
        await splice(stream, reader, writer)

    async def _shutdown(self) -> None:
        session = self.session
        if session is not None and not session.closed:
            # GOAWAY was sent by _watch (not when stopped while moving: send it
            # now); let open streams finish, bounded.
            await self._goaway_quietly(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.wait_closed(), STOP_DRAIN)
            await session.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._http is not None:
            await self._http.close()
        log.info("agent connector stopped cluster=%s", self.config.cluster_id)
