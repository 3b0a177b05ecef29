"""The schema of the ``arc-relay --config`` file: one pydantic model per section
(docs/config.md is generated from it; relay/config.py builds ``RelayConfig`` from it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from configfile import ConfigModel, Secret, Text, parse_host_port
from health.config import HealthSection
from identity import OptionalGroupSource
from identity.validator_settings import ValidatorKeys
from relay.edge_limits import (
    HEAD_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    LISTEN_BACKLOG,
    MAX_HEAD_BYTES,
    MAX_PREAUTH_CONNECTIONS,
    TLS_HANDSHAKE_THREADS,
    TLS_HANDSHAKE_TIMEOUT,
)

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_RECHECK_SECONDS",
    "MAX_RECHECK_SECONDS",
    "MUTABLE_CLAIMS",
    "AdmissionSection",
    "AuthorizationSection",
    "DebugSection",
    "IssuerSection",
    "ListenerSection",
    "PeeringSection",
    "PresenceSection",
    "RelayFile",
    "RelayLimitsSection",
    "RelayOidcSection",
    "TlsSection",
    "parse_listen",
]

# Claims a role assignment may name only by explicit opt-in: whoever controls
# the user's profile (or an Entra app's multi-tenant sign-in) can change them.
MutableClaim = Literal["upn", "preferred_username", "email", "unique_name"]
MUTABLE_CLAIMS: tuple[str, ...] = get_args(MutableClaim)
# How often open client streams are re-authorised; a revoked role or an expired
# token ends them within this. The issue bounds it at 60 s.
DEFAULT_RECHECK_SECONDS = 30.0
MAX_RECHECK_SECONDS = 60.0
DEFAULT_AUDIENCE = "api://cluster-connect"


class TlsSection(ConfigModel):
    """``tls``: the relay's serving certificate (omit both: a development CA under state_dir)."""

    cert_file: str | None = Field(default=None, description="PEM certificate chain (relative: to the config file's folder).")
    key_file: str | None = Field(default=None, description="PEM private key of that certificate.")

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("needs both cert_file and key_file (or neither, for a dev certificate)")
        return self


class IssuerSection(ConfigModel):
    """``oidc.issuers[]``: one trusted OIDC issuer."""

    issuer: str = Field(min_length=1, description="The issuer URL, exactly as the tokens' `iss`.")
    audiences: list[Text] = Field(default=[DEFAULT_AUDIENCE], description="Accepted `aud` values (empty: the default).")
    ca_file: str | None = Field(default=None, description="CA bundle for the issuer's discovery and JWKS (unset: system trust).")
    tenant_ids: list[Text] | None = Field(default=None, description="Accepted `tid` values (unset: any).")
    alias: str | None = Field(default=None, description="Short name of the issuer (role assignments may name "
                              "their assignee's issuer by it: `principalIssuer`).")
    admins: list[Text] = Field(default=[], description="Object ids (or group object ids) of this issuer with "
                               "every role on `/` (bootstrap; docs/identity-providers.md).")


class RelayOidcSection(ValidatorKeys):
    """``oidc``: whose tokens users may present."""

    issuers: list[IssuerSection] = Field(default=[], description="Trusted issuers.")
    group_source: OptionalGroupSource = Field(default=None, description="Group overage resolution "
                                              "(unset: overage tokens are refused).")


class AuthorizationSection(ConfigModel):
    """``authorization``: how role assignments match users."""

    match_mutable_claims: list[MutableClaim] = Field(default=[], description="Opt-in: role assignments and admins "
                                                     "also match these mutable claims (e.g. `[upn]`).")
    recheck_seconds: float = Field(default=DEFAULT_RECHECK_SECONDS, gt=0, le=MAX_RECHECK_SECONDS,
                                   description="Open streams are re-authorised this often (a revoked "
                                   "role or an expired token ends them).")


class ListenerSection(ConfigModel):
    """``listener``: how the relay's port serves TLS."""

    tls_engine: Literal["memorybio", "asyncio"] = Field(default="memorybio", description="`memorybio` (small per-connection buffers) or `asyncio` (aiohttp's TLS site).")
    tls_handshake_threads: int = Field(default=TLS_HANDSHAKE_THREADS, ge=0, le=64,
                                       description="Threads answering ClientHellos (memorybio; 0: on the event loop).")
    transport: Literal["aiohttp", "native"] | None = Field(
        default=None,
        description="Websocket of the agent and client connect paths: `aiohttp`, or `native` "
        "(the project's own, public APIs only); unset: `$ARC_TUNNEL_TRANSPORT`, else `aiohttp`.")


class RelayLimitsSection(ConfigModel):
    """``limits``: timeouts and bounds of the relay."""

    agent_grace_seconds: float = Field(default=5.0, ge=0, description="A stream opened while the "
                                       "cluster's agent is not connected waits this long for it to (re)connect.")
    drain_seconds: float = Field(default=10.0, ge=0, description="On SIGTERM, open streams get this long to finish "
                                 "(after the agents moved).")
    agent_move_seconds: float = Field(default=5.0, ge=0, description="On SIGTERM, each agent session keeps "
                                      "taking new streams until its agent's new session is up (elsewhere "
                                      "behind the load balancer), at most this long; then GOAWAY.")
    open_timeout_seconds: float = Field(default=10.0, gt=0, description="A stream OPEN the agent does not answer "
                                        "within this is refused.")
    tls_handshake_timeout_seconds: float = Field(default=TLS_HANDSHAKE_TIMEOUT, gt=0,
                                                 description="TCP accept to a finished TLS handshake.")
    head_timeout_seconds: float = Field(default=HEAD_TIMEOUT, gt=0, description="TLS handshake to "
                                        "a complete first request head.")
    max_head_bytes: int = Field(default=MAX_HEAD_BYTES, ge=1024, description="Largest first request head.")
    max_preauth_connections: int = Field(default=MAX_PREAUTH_CONNECTIONS, ge=1, description="Connections "
                                         "held before their first head is complete; beyond: closed at once.")
    keepalive_timeout_seconds: float = Field(default=KEEPALIVE_TIMEOUT, gt=0,
                                             description="An idle kept-alive HTTP connection is closed after this.")
    listen_backlog: int = Field(default=LISTEN_BACKLOG, ge=1, description="The listening socket's "
                                "accept queue (capped by net.core.somaxconn).")
    streams_per_principal_per_cluster: int = Field(default=256, ge=1, description="One user's share of one agent "
                                                   "session's streams.")
    streams_per_client_session: int = Field(default=512, ge=1, description="One arc-proxy session's share of all "
                                            "agents' streams.")
    authorization_cache_seconds: float = Field(default=5.0, ge=0, description="Authorization decisions of stream "
                                               "OPENs are cached this long (0: off).")
    authorization_cache_entries: int = Field(default=10000, ge=0, description="At most this many cached decisions.")
    refusal_log_interval_seconds: float = Field(default=10.0, ge=0, description="One refusal log line per "
                                                "principal/cluster/reason per interval.")
    status_flush_seconds: float = Field(default=1.0, ge=0, description="Write-behind interval of connectivity and metadata.")
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1, description="Largest management API request body (413 above).")
    api_max_body_depth: int = Field(default=32, ge=1, description="Deepest JSON nesting of a request body (400 above).")
    tunnel: dict[str, Any] = Field(default={}, description="Keyword arguments of `tunnel.TunnelConfig` "
                                   "(e.g. `{limits: {stream_window: 2097152}}`), checked at start-up.")


class AdmissionSection(ConfigModel):
    """``admission``: how many agent/client handshakes run at once (relay/admission.py)."""

    max_concurrent_handshakes: int = Field(default=64, ge=1, description="Authentication + upgrade in flight.")
    max_loop_lag_seconds: float = Field(default=0.25, ge=0, description="Hold handshakes while the event loop "
                                        "runs this late (0: off).")
    max_queue_seconds: float = Field(default=8.0, ge=0, description="A held handshake waits this long for its "
                                     "turn (0: 503 at once).")
    max_queued_handshakes: int = Field(default=4096, ge=1, description="This many wait at most; beyond: 503.")
    handshakes_per_second: float = Field(default=0.0, ge=0, description="Fixed token-bucket rate (0: off, the "
                                         "lag bound paces).")
    retry_after_seconds: int = Field(default=1, ge=1, description="The 503's Retry-After beyond a bound (least).")
    max_retry_after_seconds: int = Field(default=60, ge=1, description="The 503's Retry-After (most).")


class DebugSection(ConfigModel):
    """``debug``: test hooks."""

    record_data_file: str | None = Field(default=None, description="Append routed DATA bytes to this file "
                                         "(tests; also `$ARC_RELAY_RECORD_DATA_FILE`).")


class PresenceSection(ConfigModel):
    """``presence``: where replicas record which of them holds which agent session
    (relay/presence.py; unset `redis_url`: in this process only, for one replica)."""

    # Secret: a URL may carry the Redis password; it is never shown in an error.
    redis_url: Annotated[str | None, Secret()] = Field(
        default=None, description="`redis://[:password@]host:port/db`, `rediss://...` (TLS) or "
        "`unix:///path/redis.sock` (unset: in memory, one replica).")
    ttl_seconds: float = Field(default=15.0, ge=0.3, le=3600, description="A route lapses this long after "
                               "its replica stopped refreshing it (every third of it).")
    replica_id: Text | None = Field(default=None, min_length=1, max_length=253, pattern=r"^[^\s]+$",
                                    description="This replica's name in routes, unique in the tier "
                                    "and stable across its restarts, e.g. the pod name (unset: `advertise`).")
    advertise: str | None = Field(default=None, description="`host:port` other replicas reach this one "
                                  "at: with `peering`, its peer listener (unset: `peering.listen`, else "
                                  "`listen`; the host name standing in for a wildcard host).")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("advertise")
    @classmethod
    def _advertise_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            host, port = parse_host_port(value)
            if not host or port == 0:
                raise ValueError("expected host:port with a host and a non-zero port")
        return value


class PeeringSection(ConfigModel):
    """``peering``: the replica-to-replica link a stream takes when its cluster's
    agent is on another replica (relay/peering.py; unset: no forwarding)."""

    listen: str = Field(default="127.0.0.1:8444", description="`host:port` of the peer listener "
                        "(mutual TLS; `presence.advertise` must reach it).")
    ca_file: str = Field(description="PEM CA that issued every replica's peer certificate (only "
                         "certificates it signed are accepted, either way).")
    cert_file: str = Field(description="This replica's peer certificate (server and client auth).")
    key_file: str = Field(description="Its private key.")
    dial_timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="TCP + TLS + upgrade "
                                        "of a peer link; beyond it the route counts as stale.")
    max_links: int = Field(default=64, ge=1, description="Peer links this replica dials at most "
                           "(one per other replica).")
    max_streams_per_link: int = Field(default=1024, ge=1, description="Streams open at once on one "
                                      "peer link, either way (beyond: refused, the next route is tried).")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


class RelayHealthSection(HealthSection):
    """The relay's ``health`` section: the listener plus the per-cluster series cap."""

    max_cluster_series: int = Field(default=1000, ge=0, description="Clusters with their own metric label "
                                    "(offline first); the rest are summed under `cluster=\"_other\"`.")


class PostgresSection(ConfigModel):
    """``database`` as a section: a PostgreSQL database shared by relay replicas."""

    url: Annotated[str, Secret()] = Field(description="`postgresql://user@host:port/dbname` (no password "
                                          "here: `password_file`).")
    password_file: str | None = Field(default=None, description="File holding the database user's "
                                      "password (unset: none, or the server's trust/peer rules).")

    # Checked by relay.config.postgres_url (after parsing), so that a refused
    # URL is never echoed: it may hold a password.


class RelayFile(ConfigModel):
    """The ``arc-relay --config`` file."""

    listen: str = Field(default="127.0.0.1:8443", description="`host:port` to serve on (`[::1]:port` for IPv6).")
    public_url: str | None = Field(default=None, description="The relay's https URL as agents see it "
                                   "(their assertion's `aud`); unset: `https://listen`.")
    state_dir: str | None = Field(default=None, description="Dev TLS material and the default database "
                                  "(unset: `$XDG_STATE_HOME/cluster-connect/relay`).")
    tls: TlsSection = Field(default=TlsSection(), description="Serving certificate.")
    database: str | PostgresSection | None = Field(
        default=None, description="A SQLite file (unset: `state_dir/relay.db`), or a section "
        "`{url: postgresql://..., password_file: ...}` for PostgreSQL.")
    oidc: RelayOidcSection = Field(default=RelayOidcSection(), description="Trusted OIDC issuers.")
    admins: list[Text] = Field(default=[], description="Object ids (or group object ids) with every role "
                               "(upn only with authorization.match_mutable_claims).")
    authorization: AuthorizationSection = Field(default=AuthorizationSection(), description="Claim matching and re-checks.")
    listener: ListenerSection = Field(default=ListenerSection(), description="TLS engine of the listening port.")
    limits: RelayLimitsSection = Field(default=RelayLimitsSection(), description="Timeouts and bounds.")
    admission: AdmissionSection = Field(default=AdmissionSection(), description="Handshake admission.")
    presence: PresenceSection = Field(default=PresenceSection(), description="Routes to agent sessions "
                                      "shared between replicas (Redis).")
    peering: PeeringSection | None = Field(default=None, description="Forwarding to the replica "
                                           "holding a cluster's agent (unset: off).")
    debug: DebugSection = Field(default=DebugSection(), description="Test hooks.")
    health: RelayHealthSection = Field(default=RelayHealthSection(), description="The `/livez` `/readyz` "
                                       "`/metrics` listener (docs/metrics.md).")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("https", "wss"):
            raise ValueError("expected an https:// URL")
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6; ``:port``: every address) -> (host, port).

    Raises:
        ValueError: not host:port.
    """
    return parse_host_port(value, default_host="0.0.0.0")
