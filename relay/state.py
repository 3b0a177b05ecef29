"""What every relay handler shares: stores, metrics, validators, live sessions.

Handlers find it under ``request.app[STATE]``. Also the small HTTP helpers
(bearer extraction, JSON errors, OIDC authentication) used by several endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web

from identity import Principal, TokenInvalid, TokenValidatorCollector, bound_key_id
from identity.agent_assertion import AgentAssertionVerifier
from relay.admission import HandshakeAdmission
from relay.config import RelayConfig
from relay.database_health import DatabaseHealth
from relay.directory import SessionDirectory
from relay.log_limit import RefusalLog
from relay.metrics import RelayMetrics
from relay.presence import MemoryPresence, Presence
from relay.registry import ClusterRegistry
from relay.request_view import ErrorAnswer, RequestView
from relay.revocation import LiveStreams
from relay.roles import Action, RoleStore
from relay.shares import StreamShares

if TYPE_CHECKING:
    from relay.central_rbac_feed import CentralRbacFeed
    from relay.peering import Peering
    from relay.router import DataRecorder
    from tunnel import TunnelConfig, TunnelSession, TunnelStream

log = logging.getLogger("relay")

_T = TypeVar("_T")

# Bearer tokens longer than this are refused before any parsing.
MAX_BEARER_LENGTH = 16384


class UserTokenValidator(Protocol):
    """What the relay uses of ``identity.TokenValidator``; ``app.NoIssuers``
    stands in for it when no issuer is configured."""

    async def validate(self, token: str) -> Principal:
        """The principal of a valid token; raises ``identity.TokenInvalid``."""
        ...

    async def close(self) -> None:
        """Release HTTP sessions."""
        ...


@dataclass
class RelayState:
    """Per-relay shared objects; one instance per ``RelayServer``."""

    config: RelayConfig
    registry: ClusterRegistry
    roles: RoleStore
    directory: SessionDirectory[TunnelSession]
    metrics: RelayMetrics
    validator: UserTokenValidator
    verifier: AgentAssertionVerifier
    tunnel_config: TunnelConfig
    # Every open tunnel session (agent and client) so shutdown can GOAWAY them.
    sessions: set[TunnelSession] = field(default_factory=set)
    # The arc-proxy sessions among them (told to move first on stop: relay/drain.py).
    client_sessions: set[TunnelSession] = field(default_factory=set)
    # Agents' open control streams (the drain asks each agent to move on it).
    control_streams: set[TunnelStream] = field(default_factory=set)
    # True while a stop asks agents to move (relay/drain.py).
    moving_agents: bool = False
    accepting: bool = True
    # Test hook recording routed DATA (RelayConfig.record_data_file); None: off.
    recorder: DataRecorder | None = None
    # The periodic database ping /readyz reads (relay/database_health.py); None: not checked.
    database: DatabaseHealth | None = None
    # Agent sessions -> (cluster id, SHA-256 fingerprint of the certificate
    # they authenticated with): a key change ends the sessions of the old key.
    agent_fingerprints: dict[TunnelSession, tuple[str, str]] = field(default_factory=dict)
    # Fire-and-forget tasks (GOAWAY of a replaced session), kept referenced.
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    # Built from ``config`` in __post_init__ (relay/shares.py, log_limit.py, admission.py).
    shares: StreamShares = field(init=False)
    refusals: RefusalLog = field(init=False)
    admission: HandshakeAdmission = field(init=False)
    # Routed client streams, re-authorised while open (relay/revocation.py).
    live_streams: LiveStreams = field(init=False)
    # Routes to agent sessions on every replica (relay/presence.py); the
    # directory registers this replica's sessions in it.
    presence: Presence = field(default_factory=lambda: MemoryPresence("local", ""))
    # Pushes central Kubernetes role lists to agents (relay/central_rbac_feed.py); None: off.
    central_rbac: CentralRbacFeed | None = None
    # Links to the other replicas (relay/peering.py); None: no forwarding.
    peering: Peering | None = None
    # The validator's metrics collector (relay/health_listener.py), pointed at
    # the new validator when issuers are reloaded.
    validator_collector: TokenValidatorCollector | None = None

    def __post_init__(self) -> None:
        config = self.config
        self.shares = StreamShares(config.streams_per_principal_per_cluster,
                                   config.streams_per_client_session)
        self.refusals = RefusalLog(log, config.refusal_log_interval_seconds)
        self.admission = HandshakeAdmission(config.max_concurrent_handshakes,
                                            config.handshakes_per_second, config.retry_after_seconds,
                                            max_retry_after=config.max_retry_after_seconds,
                                            max_loop_lag=config.max_loop_lag_seconds,
                                            max_queue_seconds=config.max_queue_seconds,
                                            max_queued=config.max_queued_handshakes)
        # Read from the admission's own count at scrape time: one source of truth.
        admission = self.admission
        self.metrics.handshakes_in_flight.set_function(lambda: admission.in_flight)
        self.roles.cache.ttl = config.authorization_cache_seconds
        self.roles.cache.entries = config.authorization_cache_entries
        self.live_streams = LiveStreams(
            self.config.recheck_seconds, self.may_connect,
            on_ended=lambda outcome: self.metrics.streams_total.labels(outcome).inc(),
        )

    async def may_connect(self, principal: Principal, scope: str) -> bool:
        """Whether ``principal`` holds a role allowing ``connect`` at ``scope``."""
        return await self.may(principal, "connect", scope)

    async def may(self, principal: Principal, action: Action, scope: str) -> bool:
        """Whether ``principal`` holds a role allowing ``action`` at ``scope``:
        only assignments (and admins) of its own issuer count, and only while
        that issuer is trusted (a reload may remove it)."""
        if not any(i.issuer == principal.issuer for i in self.config.issuers):
            return False
        return bool(await self.roles.allowed(principal.issuer, self.principal_ids(principal),
                                             action, scope))

    def principal_ids(self, principal: Principal) -> set[str]:
        """The ids role assignments may name for ``principal`` under this
        relay's ``authorization.match_mutable_claims``."""
        return principal_ids(principal, self.config.match_mutable_claims)

    def central_rbac_changed(self) -> None:
        """Role assignments, a cluster's central RBAC switch or an agent
        session changed: push central role lists now."""
        if self.central_rbac is not None:
            self.central_rbac.wake()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, holding a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


STATE: web.AppKey[RelayState] = web.AppKey("relay_state", RelayState)


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """An error response ``{"error": {"code", "message"}}``."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers or None
    )


async def admitted(state: RelayState, endpoint: str,
                   handshake: Callable[[], Awaitable[_T]]) -> _T | ErrorAnswer:
    """Run one websocket endpoint's handshake (authentication + upgrade) under
    admission: a relay shutting down, or one at its admission bound, answers
    503 at once; otherwise the handshake holds an admission slot while it runs."""
    if not state.accepting:
        return ErrorAnswer(503, "ShuttingDown", "relay is shutting down; retry shortly")
    if not await state.admission.admit():
        return admission_refused(state, endpoint)
    try:
        return await handshake()
    finally:
        state.admission.done()


def admission_refused(state: RelayState, endpoint: str) -> ErrorAnswer:
    """The answer to a handshake beyond admission: 503 with ``Retry-After``,
    counted, not logged per refusal (a storm would flood the log)."""
    state.metrics.admission_refused.labels(endpoint).inc()
    hint = state.admission.retry_after_hint()
    return ErrorAnswer(503, "Busy", f"relay is admitting handshakes at its limit; retry after {hint} s",
                       {"Retry-After": str(hint)})


def upgrade_aborted(state: RelayState, request: RequestView, endpoint: str, exc: BaseException,
                    **fields: str) -> web.Response:
    """The peer went away mid-handshake (e.g. an agent that gave up waiting):
    one INFO line, counted, no traceback. Returns a response aiohttp will
    fail to send quietly."""
    state.metrics.upgrades_aborted.labels(endpoint).inc()
    log.info("%s upgrade aborted %s peer=%s error=%s", endpoint, log_fields(**fields),
             request.remote, type(exc).__name__)
    return web.Response(status=499, text="client closed request\n")


def upgrade_timed_out(request: web.Request, ws: web.WebSocketResponse, timed_out: ErrorAnswer
                      ) -> web.StreamResponse:
    """What an aiohttp handler answers when its handshake bound ran out: the
    504 while nothing was sent, else (the 101 is out) the connection is cut."""
    if not ws.prepared:
        return timed_out.response()
    if request.transport is not None:
        request.transport.abort()
    return ws


def bearer_token(request: web.Request | RequestView) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_BEARER_LENGTH:
        return None
    return token


def principal_ids(principal: Principal, mutable_claims: Iterable[str] = ()) -> set[str]:
    """Ids a role assignment (or ``admins``) may name for this principal.

    Only immutable ids by default: ``oid``, ``<iss>#<sub>`` and group object
    ids. ``mutable_claims`` (``authorization.match_mutable_claims``, e.g.
    ``upn``) adds those claims' values: an explicit, logged opt-in, because a
    user who can change their own ``upn`` could take someone else's role.
    """
    return set(principal.immutable_ids | principal.claim_values(mutable_claims))


async def authenticate(request: web.Request, endpoint: str) -> Principal | web.Response:
    """Validate the OIDC bearer; returns the principal or a 401 response to send
    (:func:`authenticate_view`)."""
    result = await authenticate_view(request.app[STATE], RequestView.of_aiohttp(request), endpoint)
    return result.response() if isinstance(result, ErrorAnswer) else result


async def authenticate_view(state: RelayState, request: RequestView,
                            endpoint: str) -> Principal | ErrorAnswer:
    """Validate the OIDC bearer; returns the principal or the 401 to send.

    The failure is logged (reason only, never the token) and counted.
    """
    token = bearer_token(request)
    if token is None:
        state.metrics.auth_failures.labels(endpoint, "missing bearer token").inc()
        log.info("auth refused endpoint=%s reason=%r peer=%s", endpoint, "missing bearer token",
                 request.remote)
        return ErrorAnswer(401, "Unauthorized", "an 'Authorization: Bearer <OIDC token>' header is required",
                           {"WWW-Authenticate": "Bearer"})
    try:
        principal = await state.validator.validate(token)
        if bound_key_id(principal.claims) is not None:
            # A token bound to a key is meant for a cluster, inside a signed request
            # (docs/pop.md); bare here it was taken from a cluster: never the relay's.
            raise TokenInvalid("token is bound to a key")
        return principal
    except TokenInvalid as exc:
        state.metrics.auth_failures.labels(endpoint, exc.reason).inc()
        log.info("auth refused endpoint=%s reason=%r peer=%s", endpoint, exc.reason, request.remote)
        message = f"token refused: {exc.reason}"
        if exc.reason == "wrong audience":
            # Most often kubectl's token, meant for clusters (every cluster sees
            # those): the relay's management API and client endpoint have their own.
            message += (": the relay accepts only tokens for its own audience, never a cluster's; "
                        "set auth.relay_scope in the client config (docs/identity-providers.md)")
        return ErrorAnswer(401, "InvalidToken", message, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def log_fields(**fields: Any) -> str:
    """``k=v`` pairs for a one-line log record (values repr'd when needed)."""
    out = []
    for key, value in fields.items():
        text = str(value)
        out.append(f"{key}={text!r}" if (" " in text or not text) else f"{key}={text}")
    return " ".join(out)
