"""``arc-agent`` configuration (docs/INTERFACES.md §6), loaded from YAML.

Example::

    relay: {url: "https://relay.example.com", ca_file: /etc/arc/relay-ca.crt}
    cluster: {resource_group: rg1, name: demo}
    agent_key_file: /etc/arc/agent.key
    kube_aad_proxy:
      listen: "127.0.0.1:0"
      serving_cert_file: /etc/arc/serving.crt     # leaf + CA chain
      serving_key_file: /etc/arc/serving.key
      upstream_url: "https://kubernetes.default.svc"
      upstream_ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
      upstream_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
      oidc:
        issuers: [{issuer: ..., audiences: [...], ca_file: ..., tenant_ids: [...],
                   username_prefix: "", groups_prefix: ""}]   # e.g. "oidc:"; "": system: names
                                                              # refused (user) / dropped (groups)
        group_source: {token_endpoint: ..., client_id: ..., client_secret_file: ..., scope: ...,
                       allowed_hosts: [...], ca_file: ...}   # overage; see identity/group_source.py
      impersonate_with: oid                       # or upn
      limits: {head_timeout_seconds: 30, tls_handshake_timeout_seconds: 10,
               max_preauth_connections: 256, idle_timeout_seconds: 300}   # slow-loris bounds
    proxy: {https: "http://proxy:3128", http: null, no_proxy: "10.0.0.0/8,.svc", ca_file: null}
    forward_to: "127.0.0.1:9000"    # optional: pipe streams there instead of kube-aad-proxy
    metadata_interval_seconds: 300
    limits: {max_concurrent_streams: 1024}   # streams this agent's session accepts at once
    health: {listen: "127.0.0.1:0",           # /livez /readyz /metrics, plain HTTP: keep it private
             max_connections: 32, connection_seconds: 30}   # health/listener.py bounds

Relative paths are resolved against the config file's folder. Files named
here are read at load time so that a missing or unreadable one is reported as
one line before anything starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from certs import load_private_key
from health import HealthLimits
from identity.group_source import GroupSourceSettings, parse_group_source

# Files we read whole: PEM keys, certificates, tokens. Anything larger is a mistake.
MAX_FILE_BYTES = 1 << 20


class AgentConfigError(Exception):
    """A configuration problem the operator can fix; the message says how."""


@dataclass(frozen=True)
class IssuerSettings:
    """One trusted OIDC issuer for kube-aad-proxy."""

    issuer: str
    audiences: tuple[str, ...]
    ca_pem: bytes | None = None
    tenant_ids: tuple[str, ...] | None = None
    # Prepended to every user name / group of this issuer (the API server's
    # --oidc-username-prefix / --oidc-groups-prefix); "" = none: system: names
    # are then refused (user) or dropped (groups).
    username_prefix: str = ""
    groups_prefix: str = ""


@dataclass(frozen=True)
class KubeAadProxySettings:
    """The ``kube_aad_proxy`` section, files already read."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    serving_cert_pem: bytes = b""
    serving_key_pem: bytes = b""
    upstream_url: str = ""
    upstream_ca_pem: bytes = b""
    upstream_token: str | None = None
    issuers: tuple[IssuerSettings, ...] = ()
    impersonate_with: str = "oid"
    # Overage (>200 groups) resolution; None: overage tokens are refused.
    group_source: GroupSourceSettings | None = None
    # kube_aad_proxy.limits as KubeAadProxyConfig keyword arguments (_proxy_limits).
    limits: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``arc-agent`` needs."""

    relay_url: str
    relay_ca_pem: bytes | None
    resource_group: str
    cluster_name: str
    agent_key_pem: bytes
    kube_aad_proxy: KubeAadProxySettings
    proxy_https: str | None = None
    proxy_http: str | None = None
    no_proxy: str | None = None
    proxy_ca_pem: bytes | None = None
    forward_to: tuple[str, int] | None = None
    metadata_interval: float = 300.0
    # Streams the agent's one session accepts at once, shared by every user
    # (the relay gives each user and client session a share of it).
    max_concurrent_streams: int = 1024
    # health.*: the /livez /readyz /metrics listener (agent/health.py); port 0: any free port.
    health_host: str = "127.0.0.1"
    health_port: int = 0
    health_limits: HealthLimits = field(default_factory=HealthLimits)

    @property
    def cluster_id(self) -> str:
        return f"{self.resource_group}/{self.cluster_name}"


def _read(base: Path, value: Any, what: str, *, required: bool = False) -> bytes | None:
    if value in (None, ""):
        if required:
            raise AgentConfigError(f"{what} is required in the agent config")
        return None
    path = Path(os.path.expanduser(str(value)))
    path = path if path.is_absolute() else base / path
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise AgentConfigError(f"{what} {path}: {exc.strerror}; fix the path or its permissions") from None
    if len(data) > MAX_FILE_BYTES:
        raise AgentConfigError(f"{what} {path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); IPv6 as ``[::1]:port``."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AgentConfigError(f"{what} {value!r} is not host:port (e.g. 127.0.0.1:8080)")
    return host.strip("[]"), int(port)


def _relay_url(value: Any) -> str:
    url = str(value or "")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "wss") or not parts.hostname:
        raise AgentConfigError(
            f"relay.url {url!r} is not a valid relay URL; write e.g. 'https://relay.example.com:443'"
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise AgentConfigError(f"relay.url {url!r} has an invalid port") from None
    return url.rstrip("/")


def name_prefix_setting(item: dict[str, Any], key: str, index: int) -> str:
    """``kube_aad_proxy.oidc.issuers[index].<key>`` (a name prefix), checked."""
    value = item.get(key) or ""
    label = f"kube_aad_proxy.oidc.issuers[{index}].{key}"
    if not isinstance(value, str):
        raise AgentConfigError(f"{label} must be a string such as 'oidc:'")
    if value[:7].lower() == "system:" or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise AgentConfigError(f"{label} {value!r} must not start with 'system:' or contain spaces")
    return value


def _kube_aad_proxy(base: Path, raw: dict[str, Any], needed: bool) -> KubeAadProxySettings:
    if not needed:
        return KubeAadProxySettings()
    host, port = parse_host_port(raw.get("listen", "127.0.0.1:0"), "kube_aad_proxy.listen")
    issuers = []
    for i, item in enumerate((raw.get("oidc") or {}).get("issuers") or []):
        if not isinstance(item, dict) or not item.get("issuer"):
            raise AgentConfigError(f"kube_aad_proxy.oidc.issuers[{i}] needs an 'issuer' URL")
        tenants = item.get("tenant_ids")
        issuers.append(IssuerSettings(
            issuer=str(item["issuer"]),
            audiences=tuple(item.get("audiences") or ("api://cluster-connect",)),
            ca_pem=_read(base, item.get("ca_file"), f"kube_aad_proxy.oidc.issuers[{i}].ca_file"),
            tenant_ids=tuple(tenants) if tenants else None,
            username_prefix=name_prefix_setting(item, "username_prefix", i),
            groups_prefix=name_prefix_setting(item, "groups_prefix", i),
        ))
    try:
        group_source = parse_group_source((raw.get("oidc") or {}).get("group_source"), base,
                                          "kube_aad_proxy.oidc.group_source")
    except ValueError as exc:
        raise AgentConfigError(str(exc)) from None
    impersonate_with = str(raw.get("impersonate_with", "oid"))
    if impersonate_with not in ("oid", "upn"):
        raise AgentConfigError(f"kube_aad_proxy.impersonate_with {impersonate_with!r} must be 'oid' or 'upn'")
    token = _read(base, raw.get("upstream_token_file"), "kube_aad_proxy.upstream_token_file")
    upstream_url = str(raw.get("upstream_url") or "")
    if urlsplit(upstream_url).scheme != "https":
        raise AgentConfigError(
            f"kube_aad_proxy.upstream_url {upstream_url!r} must be the API server's https:// URL"
        )
    return KubeAadProxySettings(
        listen_host=host,
        listen_port=port,
        serving_cert_pem=_read(base, raw.get("serving_cert_file"), "kube_aad_proxy.serving_cert_file",
                               required=True) or b"",
        serving_key_pem=_read(base, raw.get("serving_key_file"), "kube_aad_proxy.serving_key_file",
                              required=True) or b"",
        upstream_url=upstream_url.rstrip("/"),
        upstream_ca_pem=_read(base, raw.get("upstream_ca_file"), "kube_aad_proxy.upstream_ca_file",
                              required=True) or b"",
        upstream_token=token.decode().strip() if token else None,
        issuers=tuple(issuers),
        impersonate_with=impersonate_with,
        group_source=group_source,
        limits=_proxy_limits(raw.get("limits") or {}),
    )


# kube_aad_proxy.limits keys -> KubeAadProxyConfig fields (slow-loris and idle bounds).
_PROXY_LIMITS = {"head_timeout_seconds": "head_timeout", "tls_handshake_timeout_seconds": "tls_handshake_timeout",
                 "idle_timeout_seconds": "idle_timeout", "max_preauth_connections": "max_preauth_connections"}


def _proxy_limits(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) - set(_PROXY_LIMITS):
        raise AgentConfigError(f"kube_aad_proxy.limits takes only {', '.join(_PROXY_LIMITS)}")
    try:
        return {_PROXY_LIMITS[key]: int(value) if key == "max_preauth_connections" else float(value)
                for key, value in raw.items()}
    except (TypeError, ValueError):
        raise AgentConfigError("kube_aad_proxy.limits values must be numbers") from None


def agent_config_from_dict(data: Any, *, base_dir: Path | None = None) -> AgentConfig:
    """Build an ``AgentConfig`` from parsed YAML.

    Raises:
        AgentConfigError: a value is missing, malformed, or a named file unreadable.
    """
    base = base_dir or Path.cwd()
    if not isinstance(data, dict):
        raise AgentConfigError("agent config must be a YAML mapping")
    relay = data.get("relay") or {}
    cluster = data.get("cluster") or {}
    rg, name = cluster.get("resource_group"), cluster.get("name")
    if not rg or not name:
        raise AgentConfigError("cluster.resource_group and cluster.name are required in the agent config")
    key_pem = _read(base, data.get("agent_key_file"), "agent_key_file", required=True) or b""
    try:
        load_private_key(key_pem)
    except (ValueError, TypeError):
        raise AgentConfigError("agent_key_file is not an unencrypted PEM private key") from None
    forward_to = None
    if data.get("forward_to"):
        forward_to = parse_host_port(data["forward_to"], "forward_to")
    proxy = data.get("proxy") or {}
    try:
        interval = float(data.get("metadata_interval_seconds", 300))
    except (TypeError, ValueError):
        raise AgentConfigError("metadata_interval_seconds must be a number") from None
    limits = data.get("limits") or {}
    try:
        max_streams = int(limits.get("max_concurrent_streams", 1024)) if isinstance(limits, dict) else 0
    except (TypeError, ValueError):
        max_streams = 0
    if max_streams < 1:
        raise AgentConfigError("limits.max_concurrent_streams must be a whole number >= 1")
    health_host, health_port, health_limits = _health(data.get("health") or {})
    return AgentConfig(
        relay_url=_relay_url(relay.get("url")),
        relay_ca_pem=_read(base, relay.get("ca_file"), "relay.ca_file"),
        resource_group=str(rg),
        cluster_name=str(name),
        agent_key_pem=key_pem,
        kube_aad_proxy=_kube_aad_proxy(base, data.get("kube_aad_proxy") or {}, forward_to is None),
        proxy_https=proxy.get("https") or None,
        proxy_http=proxy.get("http") or None,
        no_proxy=proxy.get("no_proxy") or None,
        proxy_ca_pem=_read(base, proxy.get("ca_file"), "proxy.ca_file"),
        forward_to=forward_to,
        metadata_interval=max(1.0, interval),
        max_concurrent_streams=max_streams,
        health_host=health_host,
        health_port=health_port,
        health_limits=health_limits,
    )


def _health(raw: Any) -> tuple[str, int, HealthLimits]:
    """``health.{listen, max_connections, connection_seconds}``, checked."""
    if not isinstance(raw, dict):
        raise AgentConfigError("health must be a mapping")
    host, port = parse_host_port(raw.get("listen", "127.0.0.1:0"), "health.listen")
    try:
        limits = HealthLimits(max_connections=int(raw.get("max_connections", 32)),
                              connection_seconds=float(raw.get("connection_seconds", 30.0)))
    except (TypeError, ValueError) as exc:
        raise AgentConfigError(f"health: {exc}") from None
    return host, port, limits


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and check the agent config file.

    Raises:
        AgentConfigError: missing/unreadable file, bad YAML, bad values.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise AgentConfigError(f"config file {p} does not exist; pass an existing file to --config") from None
    except OSError as exc:
        raise AgentConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise AgentConfigError(f"config file {p} is not valid YAML") from None
    return agent_config_from_dict(data, base_dir=p.resolve().parent)
