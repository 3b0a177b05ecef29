"""``arc-relay`` configuration, loaded from YAML (every key: docs/config.md; docs/INTERFACES.md §6).

Example::

    listen: "0.0.0.0:8443"
    public_url: "https://relay.example.com"     # what agents put in their assertion's aud
    state_dir: /var/lib/arc-relay                # dev TLS material and the default database
    tls: {cert_file: /etc/arc-relay/tls.crt, key_file: /etc/arc-relay/tls.key}   # omit: dev CA
    database: /var/lib/arc-relay/relay.db       # or PostgreSQL, shared by replicas:
    # database: {url: "postgresql://relay@db:5432/arc", password_file: /etc/arc-relay/db.password}
    oidc:
      issuers:
        - {issuer: "https://login.example.com/TENANT/v2.0", audiences: ["api://cluster-connect"],
           ca_file: null, tenant_ids: null, alias: null, admins: []}   # alias: principalIssuer may name it
    admins: ["<object id or group object id>"]   # of the only issuer; with several: oidc.issuers[].admins
                                                 # upn only with authorization.match_mutable_claims
    authorization:
      match_mutable_claims: []                   # opt-in, e.g. [upn]: mutable in Entra ("nOAuth")
      recheck_seconds: 30                        # open streams re-authorised this often (role revoked)
    limits: {agent_grace_seconds: 5, drain_seconds: 10, agent_move_seconds: 5, open_timeout_seconds: 10,
             tls_handshake_timeout_seconds: 10, head_timeout_seconds: 10, max_head_bytes: 65536,
             max_preauth_connections: 1024, keepalive_timeout_seconds: 75,  # relay/edge_limits.py
             streams_per_principal_per_cluster: 256,  # one user's share of one agent session
             streams_per_client_session: 512,    # one arc-proxy session's share of all agents
             authorization_cache_seconds: 5, authorization_cache_entries: 10000,
             refusal_log_interval_seconds: 10,  # one refusal line per principal/cluster/reason
             status_flush_seconds: 1,           # write-behind of connectivity and metadata
             api_max_body_bytes: 65536, api_max_body_depth: 32,
             tunnel: {}}                         # tunnel: keyword arguments of tunnel.TunnelConfig
    admission: {max_concurrent_handshakes: 64,   # authentication + upgrade in flight
                max_loop_lag_seconds: 0.25,      # hold handshakes while the event loop runs this late (0: off)
                max_queue_seconds: 8,            # a held handshake waits this long for its turn (0: 503 at once)
                max_queued_handshakes: 4096,     # this many wait at most; beyond: 503
                handshakes_per_second: 0,        # fixed token-bucket rate (0: off, the lag bound paces)
                retry_after_seconds: 1,          # the 503's Retry-After beyond a bound (least)
                max_retry_after_seconds: 60}     # its most (each refused peer gets its own slot)
    health: {listen: "127.0.0.1:0",              # /livez /readyz /metrics, plain HTTP: keep it private
             max_connections: 32, connection_seconds: 30,   # health/listener.py bounds
             max_cluster_series: 1000}           # clusters with their own metric label (relay/metrics.py)
    presence: {redis_url: null,                  # redis://host:6379/0 or unix:///path: shared by replicas
               ttl_seconds: 15,                  # a dead replica's routes lapse within this
               replica_id: null,                 # unique and stable per replica (default: advertise)
               advertise: null}                  # host:port other replicas reach this one at
                                                 # (with peering: its peer listener's)
    peering: {listen: "127.0.0.1:8444",          # replica-to-replica links, mutual TLS (unset: off)
              ca_file: peer-ca.crt, cert_file: peer.crt, key_file: peer.key,
              dial_timeout_seconds: 2, max_links: 64, max_streams_per_link: 1024}
    debug: {record_data_file: null}              # test hook: append routed DATA bytes to a file
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cmdline.errors import ConfigError
from configfile import Problems, load_config_file, resolve_path, validate_config
from health import HealthLimits
from identity import GroupSourceSettings
from identity.agent_assertion import AGENT_CONNECT_PATH, agent_audiences
from identity.issuer_names import check_aliases
from identity.validator_settings import ValidatorKeys
from relay.config_schema import (
    DEFAULT_AUDIENCE,
    DEFAULT_RECHECK_SECONDS,
    MUTABLE_CLAIMS,
    PostgresSection,
    RelayFile,
    parse_listen,
)
from relay.edge_limits import EdgeLimits, default_transport
from relay.presence import PresenceConfig

__all__ = [
    "MUTABLE_CLAIMS",
    "ConfigError",
    "IssuerConfig",
    "PeeringConfig",
    "RelayConfig",
    "RelayFile",
    "agent_endpoint_url",
    "authorization_warnings",
    "default_state_dir",
    "load_relay_config",
    "parse_listen",
    "relay_config_from_dict",
    "relay_config_from_file",
]


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted OIDC issuer."""

    issuer: str
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    ca_file: str | None = None
    tenant_ids: tuple[str, ...] | None = None
    #: short name a role assignment may use for this issuer (``principalIssuer``)
    alias: str | None = None
    #: bootstrap admins of this issuer (object or group ids)
    admins: tuple[str, ...] = ()


def several_issuers_admins_error(count: int) -> str:
    """Why top-level ``admins`` is refused beside several issuers, and the fix."""
    return (f"a bare id could be any of the {count} trusted issuers' principal: list each admin under "
            "its issuer's oidc.issuers[].admins (docs/identity-providers.md)")


@dataclass(frozen=True)
class PeeringConfig:
    """``peering``: replica-to-replica links (relay/peering.py). Paths absolute."""

    ca_file: str
    cert_file: str
    key_file: str
    host: str = "127.0.0.1"
    port: int = 8444
    dial_timeout_seconds: float = 2.0
    max_links: int = 64
    max_streams_per_link: int = 1024


@dataclass(frozen=True)
class RelayConfig:
    """Everything ``RelayServer`` needs. Paths are absolute after loading."""

    host: str = "127.0.0.1"
    port: int = 8443
    public_url: str | None = None
    state_dir: str = ""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    database: str | None = None
    # PostgreSQL instead of the SQLite file (database: {url, password_file}).
    database_url: str | None = None
    database_password_file: str | None = None
    issuers: tuple[IssuerConfig, ...] = ()
    # oidc.clock_skew_seconds / jwks_refresh_seconds / jwks_min_refresh_seconds:
    # identity.TokenValidator keyword arguments (identity/validator_settings.py).
    validator_options: dict[str, Any] = field(default_factory=lambda: ValidatorKeys().validator_kwargs())
    group_source: GroupSourceSettings | None = None
    admins: tuple[str, ...] = ()
    agent_grace_seconds: float = 5.0
    drain_seconds: float = 10.0
    # On stop, an agent session keeps taking streams this long at most while
    # its agent dials a new one (relay/drain.py).
    agent_move_seconds: float = 5.0
    open_timeout_seconds: float = 10.0
    tunnel: dict[str, Any] = field(default_factory=dict)
    record_data_file: str | None = None
    match_mutable_claims: tuple[str, ...] = ()
    recheck_seconds: float = DEFAULT_RECHECK_SECONDS
    # listener.* and the pre-authentication limits.* (relay/edge_limits.py).
    edge: EdgeLimits = field(default_factory=EdgeLimits)
    # Shares of an agent session's streams (item "one user can take all streams").
    streams_per_principal_per_cluster: int = 256
    streams_per_client_session: int = 512
    # Authorization decisions of stream OPENs are cached this long (0: off).
    authorization_cache_seconds: float = 5.0
    authorization_cache_entries: int = 10000
    refusal_log_interval_seconds: float = 10.0
    status_flush_seconds: float = 1.0
    # Admission of handshakes (authentication + websocket upgrade).
    max_concurrent_handshakes: int = 64
    # relay/admission.py: admit while the loop lag is below this (measured,
    # bench.scale: TLS + upgrade work queued behind a 0.25 s lag still leaves
    # /readyz answering well within 1 s).
    max_loop_lag_seconds: float = 0.25
    # A handshake beyond the bounds waits for its turn instead of a 503: its
    # TLS handshake is paid for (~1 ms of relay CPU), a 503 would waste it.
    # 8 s stays well inside the agent's dial timeout (2 x 10 s); only as many
    # wait as the measured rate serves within it (relay/admission.py), the
    # rest get a 503 at once. 4096 waiting (~40 KiB each, TLS + request) is
    # most of a 5,000-agent storm after a restart: a refusal costs both
    # sides a TLS handshake for nothing.
    max_queue_seconds: float = 8.0
    max_queued_handshakes: int = 4096
    handshakes_per_second: float = 0.0
    retry_after_seconds: int = 1
    max_retry_after_seconds: int = 60

    def __post_init__(self) -> None:
        if self.admins and len(self.issuers) > 1:
            raise ValueError("admins: " + several_issuers_admins_error(len(self.issuers)))
        check_aliases([(i.issuer, i.alias) for i in self.issuers])
        for name in ("streams_per_principal_per_cluster", "streams_per_client_session",
                     "max_concurrent_handshakes", "retry_after_seconds", "max_retry_after_seconds",
                     "max_queued_handshakes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("authorization_cache_seconds", "refusal_log_interval_seconds",
                     "handshakes_per_second", "status_flush_seconds", "max_loop_lag_seconds",
                     "max_queue_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.authorization_cache_entries < 0:
            raise ValueError("authorization_cache_entries must be >= 0")
        if self.max_cluster_series < 0:
            raise ValueError("health.max_cluster_series must be >= 0")
    # Management API request bodies (relay.json_body): bytes (413 above) and nesting (400).
    api_max_body_bytes: int = 64 * 1024
    api_max_body_depth: int = 32
    # health.*: the /livez /readyz /metrics listener (health/listener.py) and
    # the per-cluster metric label cap (relay/metrics.py). Port 0: any free port.
    health_host: str = "127.0.0.1"
    health_port: int = 0
    health_limits: HealthLimits = field(default_factory=HealthLimits)
    max_cluster_series: int = 1000
    # presence.*: routes to agent sessions shared between replicas (relay/presence.py).
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    # peering.*: forwarding to the replica holding an agent session (None: off).
    peering: PeeringConfig | None = None

    @property
    def bootstrap_admins(self) -> frozenset[tuple[str, str]]:
        """(issuer, id) of every admin: top-level ``admins`` belong to the only
        issuer (refused beside several), the others to the issuer they are listed under."""
        pairs = {(i.issuer, a) for i in self.issuers for a in i.admins}
        if len(self.issuers) == 1:
            pairs.update((self.issuers[0].issuer, a) for a in self.admins)
        return frozenset(pairs)

    def issuer_named(self, name: str) -> str | None:
        """The exact ``iss`` of the trusted issuer ``name`` names (its URL or
        its alias), else None; "" names the only issuer when there is one."""
        if not name:
            return self.issuers[0].issuer if len(self.issuers) == 1 else None
        for item in self.issuers:
            if name in (item.issuer, item.alias):
                return item.issuer
        return None

    @property
    def database_path(self) -> str:
        return self.database or str(Path(self.state_dir) / "relay.db")

    def agent_audiences(self, port: int | None = None) -> list[str]:
        """The ``aud`` values an agent assertion may carry: the agent endpoint
        URL under ``public_url`` (or ``https://listen``), in https and wss form."""
        base = self.public_url
        if not base:
            host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            base = f"https://{host}:{port if port is not None else self.port}"
        return agent_audiences(base)


def authorization_warnings(config: RelayConfig) -> list[str]:
    """One WARNING line per risky authorization setting, logged at start-up."""
    out = []
    if config.match_mutable_claims:
        out.append(f"authorization.match_mutable_claims={list(config.match_mutable_claims)!r}: role "
                   "assignments and admins also match these mutable claims; a user able to change "
                   "them can take another user's roles")
    every_admin = (*config.admins, *(a for i in config.issuers for a in i.admins))
    if "upn" not in config.match_mutable_claims and any("@" in a for a in every_admin):
        out.append("admins lists an email-like name, which matches nobody: name admins by object id "
                   "(or add upn to authorization.match_mutable_claims)")
    return out


def agent_endpoint_url(relay_url: str) -> str:
    """``https://relay/agent/v1/connect`` for a relay base URL (https or wss)."""
    parts = urlsplit(relay_url.rstrip("/"))
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path}{AGENT_CONNECT_PATH}"


def default_state_dir() -> str:
    """``$XDG_STATE_HOME/cluster-connect/relay`` (``~/.local/state/...``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "cluster-connect" / "relay")


def postgres_url(value: str, source: str) -> str:
    """``value`` when it is a ``postgresql://`` URL without a password.

    Raises:
        ConfigError: not such a URL (the message never repeats it).
    """
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(f"{source}: database.url: expected postgresql://user@host:port/dbname")
    if parts.password is not None:
        raise ConfigError(f"{source}: database.url holds a password: remove it and put the password "
                          "in the file database.password_file names")
    return value


def relay_config_from_dict(data: Any, *, base_dir: Path | None = None,
                           source: str = "relay config") -> RelayConfig:
    """Build a ``RelayConfig`` from parsed YAML; relative paths are resolved
    against ``base_dir`` (the config file's folder).

    Args:
        data: the parsed YAML document (``None``: an empty file).
        base_dir: relative paths are resolved against it (default: the working directory).
        source: the file's name, at the start of every error line.

    Raises:
        ConfigError: one line per wrong, missing or unknown key.
    """
    return relay_config_from_file(validate_config(RelayFile, data, source), base_dir or Path.cwd(), source)


def relay_config_from_file(doc: RelayFile, base: Path, source: str) -> RelayConfig:
    """The runtime ``RelayConfig`` of a validated file (the group source's files read).

    Raises:
        ConfigError: a file the config names cannot be read.
    """
    def path(value: str | None) -> str | None:
        return str(resolve_path(base, value)) if value else None

    problems = Problems(source)
    group_source: GroupSourceSettings | None = None
    if doc.oidc.group_source is not None:
        group_source = doc.oidc.group_source.settings(base, "oidc.group_source", problems)
    if doc.admins and len(doc.oidc.issuers) > 1:
        problems.add("admins", several_issuers_admins_error(len(doc.oidc.issuers)))
    try:
        check_aliases([(i.issuer, i.alias) for i in doc.oidc.issuers])
    except ValueError as exc:
        problems.add("oidc.issuers", str(exc))
    problems.raise_if_any()
    host, port = parse_listen(doc.listen)
    limits, admission = doc.limits, doc.admission
    return RelayConfig(
        host=host,
        port=port,
        public_url=doc.public_url.rstrip("/") if doc.public_url else None,
        state_dir=path(doc.state_dir) or default_state_dir(),
        tls_cert_file=path(doc.tls.cert_file),
        tls_key_file=path(doc.tls.key_file),
        database=path(doc.database) if isinstance(doc.database, str) else None,
        database_url=(postgres_url(doc.database.url, source)
                      if isinstance(doc.database, PostgresSection) else None),
        database_password_file=(path(doc.database.password_file)
                                if isinstance(doc.database, PostgresSection) else None),
        issuers=tuple(IssuerConfig(
            issuer=item.issuer,
            audiences=tuple(item.audiences or (DEFAULT_AUDIENCE,)),
            ca_file=path(item.ca_file),
            tenant_ids=tuple(item.tenant_ids) if item.tenant_ids else None,
            alias=item.alias,
            admins=tuple(item.admins),
        ) for item in doc.oidc.issuers),
        group_source=group_source,
        validator_options=doc.oidc.validator_kwargs(),
        admins=tuple(doc.admins),
        agent_grace_seconds=limits.agent_grace_seconds,
        drain_seconds=limits.drain_seconds,
        agent_move_seconds=limits.agent_move_seconds,
        open_timeout_seconds=limits.open_timeout_seconds,
        tunnel=dict(limits.tunnel),
        record_data_file=path(doc.debug.record_data_file)
        or os.environ.get("ARC_RELAY_RECORD_DATA_FILE") or None,
        match_mutable_claims=tuple(dict.fromkeys(doc.authorization.match_mutable_claims)),
        recheck_seconds=doc.authorization.recheck_seconds,
        edge=EdgeLimits(
            tls_engine=doc.listener.tls_engine,
            tls_handshake_timeout=limits.tls_handshake_timeout_seconds,
            head_timeout=limits.head_timeout_seconds,
            max_head_bytes=limits.max_head_bytes,
            max_preauth_connections=limits.max_preauth_connections,
            keepalive_timeout=limits.keepalive_timeout_seconds,
            listen_backlog=limits.listen_backlog,
            tls_handshake_threads=doc.listener.tls_handshake_threads,
            transport=doc.listener.transport or default_transport(),
        ),
        streams_per_principal_per_cluster=limits.streams_per_principal_per_cluster,
        streams_per_client_session=limits.streams_per_client_session,
        authorization_cache_seconds=limits.authorization_cache_seconds,
        authorization_cache_entries=limits.authorization_cache_entries,
        refusal_log_interval_seconds=limits.refusal_log_interval_seconds,
        status_flush_seconds=limits.status_flush_seconds,
        api_max_body_bytes=limits.api_max_body_bytes,
        api_max_body_depth=limits.api_max_body_depth,
        max_concurrent_handshakes=admission.max_concurrent_handshakes,
        max_loop_lag_seconds=admission.max_loop_lag_seconds,
        max_queue_seconds=admission.max_queue_seconds,
        max_queued_handshakes=admission.max_queued_handshakes,
        handshakes_per_second=admission.handshakes_per_second,
        retry_after_seconds=admission.retry_after_seconds,
        max_retry_after_seconds=admission.max_retry_after_seconds,
        health_host=doc.health.address()[0],
        health_port=doc.health.address()[1],
        health_limits=doc.health.limits(),
        max_cluster_series=doc.health.max_cluster_series,
        presence=PresenceConfig(redis_url=doc.presence.redis_url, ttl_seconds=doc.presence.ttl_seconds,
                                replica_id=doc.presence.replica_id, advertise=doc.presence.advertise),
        peering=_peering(doc, path),
    )


def _peering(doc: RelayFile, path: Callable[[str | None], str | None]) -> PeeringConfig | None:
    section = doc.peering
    if section is None:
        return None
    host, port = parse_listen(section.listen)
    return PeeringConfig(ca_file=path(section.ca_file) or "", cert_file=path(section.cert_file) or "",
                         key_file=path(section.key_file) or "", host=host, port=port,
                         dial_timeout_seconds=section.dial_timeout_seconds,
                         max_links=section.max_links, max_streams_per_link=section.max_streams_per_link)


def load_relay_config(path: str | os.PathLike[str] | None) -> RelayConfig:
    """Read the config file (None: embedded defaults).

    Raises:
        ConfigError: missing/unreadable file, bad YAML, one line per bad key.
    """
    if path is None:
        return relay_config_from_dict({})
    p = Path(path)
    doc = load_config_file(p, RelayFile, missing="config file {path} does not exist; pass an existing file to --config")
    return relay_config_from_file(doc, p.resolve().parent, str(p))
