"""``arc-relay`` configuration, loaded from YAML (every key: docs/config.md; docs/INTERFACES.md §6).

Example::

    listen: "0.0.0.0:8443"
    public_url: "https://relay.example.com"     # what agents put in their assertion's aud
    state_dir: /var/lib/arc-relay                # dev TLS material and the default database
    tls: {cert_file: /etc/arc-relay/tls.crt, key_file: /etc/arc-relay/tls.key}   # omit: dev CA
    database: /var/lib/arc-relay/relay.db
    oidc:
      issuers:
        - {issuer: "https://login.example.com/TENANT/v2.0", audiences: ["api://cluster-connect"],
           ca_file: null, tenant_ids: null}
    admins: ["<object id or group object id>"]   # upn only with authorization.match_mutable_claims
    authorization:
      match_mutable_claims: []                   # opt-in, e.g. [upn]: mutable in Entra ("nOAuth")
      recheck_seconds: 30                        # open streams re-authorised this often (role revoked)
    limits: {agent_grace_seconds: 5, drain_seconds: 10, open_timeout_seconds: 10,
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
                max_queue_seconds: 5,            # a held handshake waits this long for its turn (0: 503 at once)
                max_queued_handshakes: 1024,     # this many wait at most; beyond: 503
                handshakes_per_second: 0,        # fixed token-bucket rate (0: off, the lag bound paces)
                retry_after_seconds: 1,          # the 503's Retry-After beyond a bound (least)
                max_retry_after_seconds: 60}     # its most (each refused peer gets its own slot)
    debug: {record_data_file: null}              # test hook: append routed DATA bytes to a file
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from cmdline.errors import ConfigError
from configfile import ConfigModel, Problems, Text, load_config_file, resolve_path, validate_config
from identity import GroupSourceSettings, OptionalGroupSource
from relay.edge_limits import (
    HEAD_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    LISTEN_BACKLOG,
    MAX_HEAD_BYTES,
    MAX_PREAUTH_CONNECTIONS,
    TLS_HANDSHAKE_THREADS,
    TLS_HANDSHAKE_TIMEOUT,
    EdgeLimits,
)

__all__ = [
    "MUTABLE_CLAIMS",
    "ConfigError",
    "IssuerConfig",
    "RelayConfig",
    "RelayFile",
    "agent_audiences_for",
    "agent_endpoint_url",
    "authorization_warnings",
    "default_state_dir",
    "load_relay_config",
    "parse_listen",
    "relay_config_from_dict",
    "relay_config_from_file",
]

# Claims a role assignment may name only by explicit opt-in: whoever controls
# the user's profile (or an Entra app's multi-tenant sign-in) can change them.
MUTABLE_CLAIMS = ("upn", "preferred_username", "email", "unique_name")
MutableClaim = Literal["upn", "preferred_username", "email", "unique_name"]
# How often open client streams are re-authorised; a revoked role or an expired
# token ends them within this. The issue bounds it at 60 s.
DEFAULT_RECHECK_SECONDS = 30.0
MAX_RECHECK_SECONDS = 60.0
DEFAULT_AUDIENCE = "api://cluster-connect"


# ---- the file's schema (docs/config.md is generated from it) ----

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


class RelayOidcSection(ConfigModel):
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


class RelayLimitsSection(ConfigModel):
    """``limits``: timeouts and bounds of the relay."""

    agent_grace_seconds: float = Field(default=5.0, ge=0, description="A stream opened while the "
                                       "cluster's agent is not connected waits this long for it to (re)connect.")
    drain_seconds: float = Field(default=10.0, ge=0, description="On SIGTERM, open streams get this long to finish.")
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
    max_queue_seconds: float = Field(default=5.0, ge=0, description="A held handshake waits this long for its "
                                     "turn (0: 503 at once).")
    max_queued_handshakes: int = Field(default=1024, ge=1, description="This many wait at most; beyond: 503.")
    handshakes_per_second: float = Field(default=0.0, ge=0, description="Fixed token-bucket rate (0: off, the "
                                         "lag bound paces).")
    retry_after_seconds: int = Field(default=1, ge=1, description="The 503's Retry-After beyond a bound (least).")
    max_retry_after_seconds: int = Field(default=60, ge=1, description="The 503's Retry-After (most).")


class DebugSection(ConfigModel):
    """``debug``: test hooks."""

    record_data_file: str | None = Field(default=None, description="Append routed DATA bytes to this file "
                                         "(tests; also `$ARC_RELAY_RECORD_DATA_FILE`).")


class RelayFile(ConfigModel):
    """The ``arc-relay --config`` file."""

    listen: str = Field(default="127.0.0.1:8443", description="`host:port` to serve on (`[::1]:port` for IPv6).")
    public_url: str | None = Field(default=None, description="The relay's https URL as agents see it "
                                   "(their assertion's `aud`); unset: `https://listen`.")
    state_dir: str | None = Field(default=None, description="Dev TLS material and the default database "
                                  "(unset: `$XDG_STATE_HOME/cluster-connect/relay`).")
    tls: TlsSection = Field(default=TlsSection(), description="Serving certificate.")
    database: str | None = Field(default=None, description="SQLite file (unset: `state_dir/relay.db`).")
    oidc: RelayOidcSection = Field(default=RelayOidcSection(), description="Trusted OIDC issuers.")
    admins: list[Text] = Field(default=[], description="Object ids (or group object ids) with every role "
                               "(upn only with authorization.match_mutable_claims).")
    authorization: AuthorizationSection = Field(default=AuthorizationSection(), description="Claim matching and re-checks.")
    listener: ListenerSection = Field(default=ListenerSection(), description="TLS engine of the listening port.")
    limits: RelayLimitsSection = Field(default=RelayLimitsSection(), description="Timeouts and bounds.")
    admission: AdmissionSection = Field(default=AdmissionSection(), description="Handshake admission.")
    debug: DebugSection = Field(default=DebugSection(), description="Test hooks.")

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


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted OIDC issuer."""

    issuer: str
    audiences: tuple[str, ...] = ("api://cluster-connect",)
    ca_file: str | None = None
    tenant_ids: tuple[str, ...] | None = None


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
    issuers: tuple[IssuerConfig, ...] = ()
    group_source: GroupSourceSettings | None = None
    admins: tuple[str, ...] = ()
    agent_grace_seconds: float = 5.0
    drain_seconds: float = 10.0
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
    # 5 s stays well inside the agent's dial timeout (2 x 10 s).
    max_queue_seconds: float = 5.0
    max_queued_handshakes: int = 1024
    handshakes_per_second: float = 0.0
    retry_after_seconds: int = 1
    max_retry_after_seconds: int = 60

    def __post_init__(self) -> None:
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
    # Management API request bodies (relay.json_body): bytes (413 above) and nesting (400).
    api_max_body_bytes: int = 64 * 1024
    api_max_body_depth: int = 32

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
        return agent_audiences_for(base)


def authorization_warnings(config: RelayConfig) -> list[str]:
    """One WARNING line per risky authorization setting, logged at start-up."""
    out = []
    if config.match_mutable_claims:
        out.append(f"authorization.match_mutable_claims={list(config.match_mutable_claims)!r}: role "
                   "assignments and admins also match these mutable claims; a user able to change "
                   "them can take another user's roles")
    if "upn" not in config.match_mutable_claims and any("@" in a for a in config.admins):
        out.append("admins lists an email-like name, which matches nobody: name admins by object id "
                   "(or add upn to authorization.match_mutable_claims)")
    return out


def agent_endpoint_url(relay_url: str) -> str:
    """``https://relay/agent/v1/connect`` for a relay base URL (https or wss)."""
    parts = urlsplit(relay_url.rstrip("/"))
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path}/agent/v1/connect"


def agent_audiences_for(relay_url: str) -> list[str]:
    """Both spellings (https and wss) of the agent endpoint URL."""
    https = agent_endpoint_url(relay_url)
    return [https, "wss" + https[len("https"):] if https.startswith("https") else https]


def default_state_dir() -> str:
    """``$XDG_STATE_HOME/cluster-connect/relay`` (``~/.local/state/...``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "cluster-connect" / "relay")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port).

    Raises:
        ValueError: not host:port.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected host:port such as '127.0.0.1:8443'")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        database=path(doc.database),
        issuers=tuple(IssuerConfig(
            issuer=item.issuer,
            audiences=tuple(item.audiences or (DEFAULT_AUDIENCE,)),
            ca_file=path(item.ca_file),
            tenant_ids=tuple(item.tenant_ids) if item.tenant_ids else None,
        ) for item in doc.oidc.issuers),
        group_source=group_source,
        admins=tuple(doc.admins),
        agent_grace_seconds=limits.agent_grace_seconds,
        drain_seconds=limits.drain_seconds,
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
    )


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
