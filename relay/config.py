"""``arc-relay`` configuration (docs/INTERFACES.md §6), loaded from YAML.

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
    health: {listen: "127.0.0.1:0",              # /livez /readyz /metrics, plain HTTP: keep it private
             max_connections: 32, connection_seconds: 30,   # health/listener.py bounds
             max_cluster_series: 1000}           # clusters with their own metric label (relay/metrics.py)
    debug: {record_data_file: null}              # test hook: append routed DATA bytes to a file
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from health import HealthLimits
from identity.group_source import GroupSourceSettings, parse_group_source
from relay.edge_limits import EdgeLimits, edge_limits_from

# Claims a role assignment may name only by explicit opt-in: whoever controls
# the user's profile (or an Entra app's multi-tenant sign-in) can change them.
MUTABLE_CLAIMS = ("upn", "preferred_username", "email", "unique_name")
# How often open client streams are re-authorised; a revoked role or an expired
# token ends them within this. The issue bounds it at 60 s.
DEFAULT_RECHECK_SECONDS = 30.0
MAX_RECHECK_SECONDS = 60.0


class ConfigError(Exception):
    """A configuration problem the operator can fix; the message says how."""


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
    """``host:port`` (``[::1]:port`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen {value!r} is not host:port; write e.g. '127.0.0.1:8443'")
    return host.strip("[]") or "0.0.0.0", int(port)


def _resolve(base: Path, value: Any) -> str | None:
    if value in (None, ""):
        return None
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (base / path))


def relay_config_from_dict(data: dict[str, Any], *, base_dir: Path | None = None) -> RelayConfig:
    """Build a ``RelayConfig`` from parsed YAML; relative paths are resolved
    against ``base_dir`` (the config file's folder).

    Raises:
        ConfigError: a value is missing or malformed.
    """
    base = base_dir or Path.cwd()
    if not isinstance(data, dict):
        raise ConfigError("relay config must be a YAML mapping")
    host, port = parse_listen(str(data.get("listen", "127.0.0.1:8443")))
    public_url = data.get("public_url")
    if public_url is not None and urlsplit(str(public_url)).scheme not in ("https", "wss"):
        raise ConfigError(f"public_url {public_url!r} must start with https://")
    tls = data.get("tls") or {}
    cert_file, key_file = _resolve(base, tls.get("cert_file")), _resolve(base, tls.get("key_file"))
    if bool(cert_file) != bool(key_file):
        raise ConfigError("tls needs both cert_file and key_file (or neither, for a dev certificate)")
    issuers = []
    for i, raw in enumerate((data.get("oidc") or {}).get("issuers") or []):
        if not isinstance(raw, dict) or not raw.get("issuer"):
            raise ConfigError(f"oidc.issuers[{i}] needs an 'issuer' URL")
        tenants = raw.get("tenant_ids")
        issuers.append(IssuerConfig(
            issuer=str(raw["issuer"]),
            audiences=tuple(raw.get("audiences") or ("api://cluster-connect",)),
            ca_file=_resolve(base, raw.get("ca_file")),
            tenant_ids=tuple(tenants) if tenants else None,
        ))
    try:
        group_source = parse_group_source((data.get("oidc") or {}).get("group_source"), base)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    limits = data.get("limits") or {}
    admission = data.get("admission") or {}
    debug = data.get("debug") or {}
    if not isinstance(limits, dict) or not isinstance(admission, dict):
        raise ConfigError("limits and admission must be YAML mappings")
    mutable_claims, recheck_seconds = _authorization(data.get("authorization") or {})
    health_host, health_port, health_limits, max_cluster_series = _health(data.get("health") or {})
    try:
        edge = edge_limits_from(data.get("listener") or {}, limits)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    try:
        return RelayConfig(
            host=host,
            port=port,
            public_url=str(public_url).rstrip("/") if public_url else None,
            state_dir=_resolve(base, data.get("state_dir")) or default_state_dir(),
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            database=_resolve(base, data.get("database")),
            issuers=tuple(issuers),
            group_source=group_source,
            admins=tuple(str(a) for a in data.get("admins") or ()),
            agent_grace_seconds=float(limits.get("agent_grace_seconds", 5.0)),
            drain_seconds=float(limits.get("drain_seconds", 10.0)),
            open_timeout_seconds=float(limits.get("open_timeout_seconds", 10.0)),
            tunnel=dict(limits.get("tunnel") or {}),
            api_max_body_bytes=_positive_int(limits, "api_max_body_bytes", 64 * 1024),
            api_max_body_depth=_positive_int(limits, "api_max_body_depth", 32),
            record_data_file=_resolve(base, debug.get("record_data_file"))
            or os.environ.get("ARC_RELAY_RECORD_DATA_FILE") or None,
            match_mutable_claims=mutable_claims,
            recheck_seconds=recheck_seconds,
            edge=edge,
            streams_per_principal_per_cluster=int(limits.get("streams_per_principal_per_cluster", 256)),
            streams_per_client_session=int(limits.get("streams_per_client_session", 512)),
            authorization_cache_seconds=float(limits.get("authorization_cache_seconds", 5.0)),
            authorization_cache_entries=int(limits.get("authorization_cache_entries", 10000)),
            refusal_log_interval_seconds=float(limits.get("refusal_log_interval_seconds", 10.0)),
            status_flush_seconds=float(limits.get("status_flush_seconds", 1.0)),
            max_concurrent_handshakes=int(admission.get("max_concurrent_handshakes", 64)),
            max_loop_lag_seconds=float(admission.get("max_loop_lag_seconds", 0.25)),
            max_queue_seconds=float(admission.get("max_queue_seconds", 5.0)),
            max_queued_handshakes=int(admission.get("max_queued_handshakes", 1024)),
            handshakes_per_second=float(admission.get("handshakes_per_second", 0.0)),
            retry_after_seconds=int(admission.get("retry_after_seconds", 1)),
            max_retry_after_seconds=int(admission.get("max_retry_after_seconds", 60)),
            health_host=health_host,
            health_port=health_port,
            health_limits=health_limits,
            max_cluster_series=max_cluster_series,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"limits/admission: {exc}") from None


def _authorization(raw: Any) -> tuple[tuple[str, ...], float]:
    """``authorization.{match_mutable_claims, recheck_seconds}``, checked."""
    if not isinstance(raw, dict):
        raise ConfigError("authorization must be a mapping")
    claims = raw.get("match_mutable_claims") or []
    if not isinstance(claims, list) or any(c not in MUTABLE_CLAIMS for c in claims):
        raise ConfigError(f"authorization.match_mutable_claims must be a list of {', '.join(MUTABLE_CLAIMS)}")
    try:
        recheck = float(raw.get("recheck_seconds", DEFAULT_RECHECK_SECONDS))
    except (TypeError, ValueError):
        recheck = -1.0
    if not 0 < recheck <= MAX_RECHECK_SECONDS:
        raise ConfigError(f"authorization.recheck_seconds must be a number in (0, {MAX_RECHECK_SECONDS:g}]")
    return tuple(dict.fromkeys(str(c) for c in claims)), recheck


def _health(raw: Any) -> tuple[str, int, HealthLimits, int]:
    """``health.{listen, max_connections, connection_seconds, max_cluster_series}``, checked."""
    if not isinstance(raw, dict):
        raise ConfigError("health must be a mapping")
    listen = str(raw.get("listen", "127.0.0.1:0"))
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"health.listen {listen!r} is not host:port; write e.g. '127.0.0.1:9090'")
    try:
        limits = HealthLimits(max_connections=int(raw.get("max_connections", 32)),
                              connection_seconds=float(raw.get("connection_seconds", 30.0)))
        series = int(raw.get("max_cluster_series", 1000))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"health: {exc}") from None
    if series < 0:
        raise ConfigError("health.max_cluster_series must be a whole number >= 0")
    return host.strip("[]"), int(port), limits, series


def _positive_int(limits: dict[str, Any], key: str, default: int) -> int:
    value = int(limits.get(key, default))
    if value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value}")
    return value


def load_relay_config(path: str | os.PathLike[str] | None) -> RelayConfig:
    """Read the config file (None: embedded defaults).

    Raises:
        ConfigError: missing/unreadable file or bad values.
    """
    if path is None:
        return relay_config_from_dict({})
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; pass an existing file to --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    return relay_config_from_dict(data, base_dir=p.resolve().parent)
