"""``arc-agent`` configuration, loaded from YAML (every key: docs/config.md; docs/INTERFACES.md §6).

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
                   alias: null, username_prefix: null, groups_prefix: null}]
                   # prefixes unset: none with one issuer, "<alias>:" with several (identity/issuer_names.py);
                   # "": system: names refused (user) / dropped (groups)
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

from pydantic import Field, field_validator

from agent.kube_aad_proxy.config import DEFAULT_AUDIENCE, KubeAadProxySection, host_port
from certs import load_private_key
from cmdline.errors import ConfigError
from configfile import ConfigModel, Problems, Text, load_config_file, validate_config
from health import HealthLimits
from health.config import HealthSection
from identity import GroupSourceSettings
from identity.issuer_names import IssuerNaming, Prefixes, resolve_prefixes
from identity.validator_settings import ValidatorKeys

__all__ = [
    "AgentConfig",
    "AgentConfigError",
    "AgentFile",
    "IssuerSettings",
    "KubeAadProxySettings",
    "agent_config_from_dict",
    "load_agent_config",
]

# The agent's config errors are everyone's: arc-agent reports them like every CLI.
AgentConfigError = ConfigError


# ---- the file's schema (docs/config.md is generated from it) ----

class AgentRelaySection(ConfigModel):
    """``relay``: where the agent dials."""

    url: str = Field(description="The relay's base URL, `https://host[:port]` (required).")
    ca_file: str | None = Field(default=None, description="CA bundle of the relay's certificate (unset: system trust).")

    @field_validator("url")
    @classmethod
    def _relay_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ValueError("expected a relay URL with a valid port, e.g. 'https://relay.example.com:443'") from None
        if parts.scheme not in ("https", "wss") or not parts.hostname:
            raise ValueError("expected a relay URL such as 'https://relay.example.com:443'")
        return value


class ClusterSection(ConfigModel):
    """``cluster``: which cluster this agent serves."""

    resource_group: Text = Field(min_length=1, description="The cluster's resource group (required).")
    name: Text = Field(min_length=1, description="The cluster's name (required).")


class ProxySection(ConfigModel):
    """``proxy``: an outbound HTTP proxy for the relay connection (`""` = unset)."""

    https: str | None = Field(default=None, description="Proxy URL for https (e.g. `http://proxy:3128`).")
    http: str | None = Field(default=None, description="Proxy URL for http.")
    no_proxy: str | None = Field(default=None, description="Comma-separated hosts/ranges reached directly.")
    ca_file: str | None = Field(default=None, description="CA bundle of a TLS-intercepting proxy.")


class AgentLimitsSection(ConfigModel):
    """``limits``: bounds of the agent's session."""

    max_concurrent_streams: int = Field(default=1024, ge=1, description="Streams the agent's session accepts "
                                        "at once, shared by every user.")


class CentralRbacSection(ConfigModel):
    """``central_rbac``: central Kubernetes roles from the relay (docs/central-rbac.md)."""

    max_staleness_seconds: float = Field(default=90.0, gt=0, description="A central role list not confirmed "
                                         "by the relay for this long (disconnected agent) stops granting "
                                         "anything: fail closed. The relay re-sends it every 30 s.")


class AgentFile(ConfigModel):
    """The ``arc-agent --config`` file."""

    relay: AgentRelaySection = Field(description="Where the relay is (required).")
    cluster: ClusterSection = Field(description="Which cluster this is (required).")
    agent_key_file: str = Field(min_length=1, description="The agent's private key, unencrypted PEM (required).")
    kube_aad_proxy: KubeAadProxySection = Field(default=KubeAadProxySection(), description="The in-cluster "
                                                "endpoint kubectl reaches (needed unless forward_to).")
    proxy: ProxySection = Field(default=ProxySection(), description="Outbound HTTP proxy.")
    forward_to: str | None = Field(default=None, description="`host:port`: pipe streams there instead of to "
                                   "kube-aad-proxy (tests, demos).")
    metadata_interval_seconds: float = Field(default=300.0, ge=1, description="How often cluster metadata "
                                             "(version, node count) is reported.")
    limits: AgentLimitsSection = Field(default=AgentLimitsSection(), description="Session bounds.")
    health: HealthSection = Field(default=HealthSection(), description="The `/livez` `/readyz` `/metrics` "
                                  "listener (ready: relay session up, API server answering).")
    central_rbac: CentralRbacSection = Field(default=CentralRbacSection(), description="Central Kubernetes "
                                             "roles (enabled per cluster at the relay).")

    @field_validator("forward_to")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value:
            host_port(value)
        return value


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
    # kube_aad_proxy.pop (proof-of-possession) as KubeAadProxyConfig keyword arguments.
    pop: dict[str, Any] = field(default_factory=dict)
    # oidc.clock_skew_seconds / jwks_*: identity.TokenValidator keyword arguments.
    validator_options: dict[str, Any] = field(default_factory=lambda: ValidatorKeys().validator_kwargs())


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
    # central_rbac.max_staleness_seconds (agent/central_rbac.py).
    central_rbac_max_staleness: float = 90.0

    @property
    def cluster_id(self) -> str:
        return f"{self.resource_group}/{self.cluster_name}"


def agent_config_from_dict(data: Any, *, base_dir: Path | None = None,
                           source: str = "agent config") -> AgentConfig:
    """Build an ``AgentConfig`` from parsed YAML, reading the files it names.

    Args:
        data: the parsed YAML document (``None``: an empty file).
        base_dir: relative paths are resolved against it (default: the working directory).
        source: the file's name, at the start of every error line.

    Raises:
        ConfigError: one line per wrong, missing or unknown key or unreadable file.
    """
    return agent_config_from_file(validate_config(AgentFile, data, source), base_dir or Path.cwd(), source)


def agent_config_from_file(doc: AgentFile, base: Path, source: str) -> AgentConfig:
    """The runtime ``AgentConfig`` of a validated file: every file it names read
    now, so that a missing one is reported before anything starts.

    Raises:
        ConfigError: one line per unreadable file or key that kube-aad-proxy needs.
    """
    problems = Problems(source)
    key_pem = problems.read(base, doc.agent_key_file, "agent_key_file", required=True)
    if key_pem is not None:
        try:
            load_private_key(key_pem)
        except (ValueError, TypeError):
            problems.add("agent_key_file", "the file is not an unencrypted PEM private key")
    relay_ca_pem = problems.read(base, doc.relay.ca_file, "relay.ca_file")
    proxy_ca_pem = problems.read(base, doc.proxy.ca_file, "proxy.ca_file")
    kube_aad_proxy = KubeAadProxySettings()
    if not doc.forward_to:
        kube_aad_proxy = _kube_aad_proxy(doc.kube_aad_proxy, base, problems)
    problems.raise_if_any()
    return AgentConfig(
        relay_url=doc.relay.url.rstrip("/"),
        relay_ca_pem=relay_ca_pem,
        resource_group=doc.cluster.resource_group,
        cluster_name=doc.cluster.name,
        agent_key_pem=key_pem or b"",
        kube_aad_proxy=kube_aad_proxy,
        proxy_https=doc.proxy.https or None,
        proxy_http=doc.proxy.http or None,
        no_proxy=doc.proxy.no_proxy or None,
        proxy_ca_pem=proxy_ca_pem,
        forward_to=host_port(doc.forward_to) if doc.forward_to else None,
        metadata_interval=doc.metadata_interval_seconds,
        max_concurrent_streams=doc.limits.max_concurrent_streams,
        health_host=doc.health.address()[0],
        health_port=doc.health.address()[1],
        health_limits=doc.health.limits(),
        central_rbac_max_staleness=doc.central_rbac.max_staleness_seconds,
    )


def _kube_aad_proxy(section: KubeAadProxySection, base: Path, problems: Problems) -> KubeAadProxySettings:
    """The ``kube_aad_proxy`` section with its files read (problems recorded)."""
    where = "kube_aad_proxy"
    issuers = []
    try:
        prefixes = resolve_prefixes([IssuerNaming(i.issuer, i.alias, i.username_prefix, i.groups_prefix)
                                     for i in section.oidc.issuers])
    except ValueError as exc:
        problems.add(f"{where}.oidc.issuers", str(exc))
        prefixes = {}
    for i, item in enumerate(section.oidc.issuers):
        named = prefixes.get(item.issuer, Prefixes("", ""))
        issuers.append(IssuerSettings(
            issuer=item.issuer,
            audiences=tuple(item.audiences or (DEFAULT_AUDIENCE,)),
            ca_pem=problems.read(base, item.ca_file, f"{where}.oidc.issuers[{i}].ca_file"),
            tenant_ids=tuple(item.tenant_ids) if item.tenant_ids else None,
            username_prefix=named.username,
            groups_prefix=named.groups,
        ))
    group_source: GroupSourceSettings | None = None
    if section.oidc.group_source is not None:
        group_source = section.oidc.group_source.settings(base, f"{where}.oidc.group_source", problems)
    if not section.upstream_url:
        problems.add(f"{where}.upstream_url", "required key is missing (or set forward_to)")
    token = problems.read(base, section.upstream_token_file, f"{where}.upstream_token_file")
    host, port = host_port(section.listen)
    return KubeAadProxySettings(
        listen_host=host,
        listen_port=port,
        serving_cert_pem=problems.read(base, section.serving_cert_file, f"{where}.serving_cert_file",
                                       required=True) or b"",
        serving_key_pem=problems.read(base, section.serving_key_file, f"{where}.serving_key_file",
                                      required=True) or b"",
        upstream_url=(section.upstream_url or "").rstrip("/"),
        upstream_ca_pem=problems.read(base, section.upstream_ca_file, f"{where}.upstream_ca_file",
                                      required=True) or b"",
        upstream_token=token.decode(errors="replace").strip() if token else None,
        issuers=tuple(issuers),
        impersonate_with=section.impersonate_with,
        group_source=group_source,
        limits=section.limits.proxy_kwargs(),
        pop=section.pop.proxy_kwargs(),
        validator_options=section.oidc.validator_kwargs(),
    )


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and check the agent config file.

    Raises:
        ConfigError: missing/unreadable file, bad YAML, one line per bad key or file.
    """
    p = Path(path)
    doc = load_config_file(p, AgentFile, missing="config file {path} does not exist; pass an existing file to --config")
    return agent_config_from_file(doc, p.resolve().parent, str(p))
