"""Configuration of kube-aad-proxy, the limits it enforces, and the schema of
the ``kube_aad_proxy`` section of the agent's config file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.kube_aad_proxy.names import is_reserved
from configfile import ConfigModel, Text, parse_host_port
from identity import OptionalGroupSource
from identity.validator_settings import ValidatorKeys

if TYPE_CHECKING:
    from agent.kube_aad_proxy.names import NamePrefixes
    from agent.kube_aad_proxy.oidc import TokenValidatorLike
    from certs import IssuedCertificate

# Go's net/http refuses request heads above 1 MiB (http.DefaultMaxHeaderBytes);
# the API server behind us cannot accept more, so neither do we.
MAX_HEAD_BYTES = 1 << 20
# A chunk-size line with extensions; Go caps its own line reader at 4 KiB.
MAX_CHUNK_LINE_BYTES = 4096
# Above this many bytes queued toward one side we stop reading from the other.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
# Opening the upstream TLS connection (TCP + handshake) may not take longer.
UPSTREAM_CONNECT_TIMEOUT = 10.0
# kubectl's TLS handshake with us may not take longer.
SSL_HANDSHAKE_TIMEOUT = 10.0
# A request head must be complete within this from its first byte (for the
# first head: from the end of the TLS handshake) -- the slow-loris guard; Go's
# client writes a head in one go, so anything slower is broken or hostile.
HEAD_TIMEOUT = 30.0
# Connections held at once before their first request head is complete (TLS
# handshake included); beyond it new ones are closed at once. kubectl opens a
# handful per command; each costs a TLS session of ~300 KiB in asyncio's TLS.
MAX_PREAUTH_CONNECTIONS = 256
# A kept-alive connection with nothing in flight is closed after this; kubectl's
# pool reopens transparently. Watches, logs -f and spliced exec/port-forward are
# never idle in this sense.
IDLE_TIMEOUT = 300.0
# The audience an issuer's tokens carry unless the config names others.
DEFAULT_AUDIENCE = "api://cluster-connect"


@dataclass(frozen=True)
class KubeAadProxyConfig:
    """What kube-aad-proxy needs to run.

    Args:
        upstream_url: The API server, ``https://host:port`` (no path).
        upstream_ca_pem: CA bundle that the API server's certificate must chain to.
        serving_cert: The certificate kubectl sees (the cluster's serving certificate).
        upstream_token: The agent's own service-account token, sent with
            impersonation headers for OIDC callers. Required with ``validator``.
        validator: An ``identity.TokenValidator``; without it every request is
            passed through with the caller's own credentials.
        trusted_issuers: ``iss`` values that select the OIDC path. ``None``
            takes them from ``validator`` (its ``issuers`` attribute).
        impersonate_with: Which claim becomes ``Impersonate-User``.
        cluster_name: Written into each audit line.
        name_prefixes: Issuer (exact ``iss``) -> prefixes of its user names and
            groups (agent config ``oidc.issuers[].username_prefix`` /
            ``groups_prefix``). Without one, ``system:`` groups are dropped and
            a ``system:`` user name is refused (names.py).
        max_head_bytes: Largest request or response head accepted.
        upstream_connect_timeout: Seconds for TCP connect plus TLS handshake upstream.
        head_timeout: Seconds from the start of a request head (for the first
            head: from the end of the TLS handshake) until it is complete.
        tls_handshake_timeout: Seconds from TCP accept to a finished TLS handshake.
        max_preauth_connections: Connections held before their first request
            head is complete; beyond it new ones are closed at once.
        idle_timeout: Seconds a connection with nothing in flight is kept.
    """

    upstream_url: str
    upstream_ca_pem: bytes
    serving_cert: IssuedCertificate
    upstream_token: str | None = None
    validator: TokenValidatorLike | None = None
    trusted_issuers: frozenset[str] | None = None
    impersonate_with: Literal["oid", "upn"] = "oid"
    cluster_name: str = ""
    name_prefixes: Mapping[str, NamePrefixes] | None = None
    max_head_bytes: int = MAX_HEAD_BYTES
    upstream_connect_timeout: float = UPSTREAM_CONNECT_TIMEOUT
    head_timeout: float = HEAD_TIMEOUT
    tls_handshake_timeout: float = SSL_HANDSHAKE_TIMEOUT
    max_preauth_connections: int = MAX_PREAUTH_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    _parsed: tuple[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        url = urlsplit(self.upstream_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"upstream_url must be https://host[:port], got {self.upstream_url!r}")
        if url.path not in ("", "/") or url.query:
            raise ValueError("upstream_url must not have a path or query (kube-aad-proxy forwards paths as sent)")
        if self.validator is not None and not self.upstream_token:
            raise ValueError("a validator needs upstream_token: impersonation is sent with the agent's own credentials")
        if not (self.head_timeout > 0 and self.tls_handshake_timeout > 0 and self.idle_timeout > 0):
            raise ValueError("head_timeout, tls_handshake_timeout and idle_timeout must be > 0")
        if self.max_preauth_connections < 1:
            raise ValueError("max_preauth_connections must be >= 1")
        if self.impersonate_with not in ("oid", "upn"):
            raise ValueError("impersonate_with must be 'oid' or 'upn'")
        object.__setattr__(self, "_parsed", (url.hostname, url.port or 443))

    @property
    def upstream_host(self) -> str:
        """Host name or address of the API server (also its TLS server name)."""
        return self._parsed[0]

    @property
    def upstream_port(self) -> int:
        """TCP port of the API server."""
        return self._parsed[1]


# ---- the ``kube_aad_proxy`` section of the agent's config file (docs/config.md) ----

class ProxyIssuerSection(ConfigModel):
    """``kube_aad_proxy.oidc.issuers[]``: one trusted OIDC issuer."""

    issuer: str = Field(min_length=1, description="The issuer URL, exactly as the tokens' `iss`.")
    audiences: list[Text] = Field(default=[DEFAULT_AUDIENCE], description="Accepted `aud` values (empty: the default).")
    ca_file: str | None = Field(default=None, description="CA bundle for discovery and JWKS (unset: system trust).")
    tenant_ids: list[Text] | None = Field(default=None, description="Accepted `tid` values (unset: any).")
    alias: str | None = Field(default=None, description="Short name of the issuer; with several issuers its "
                              "names are prefixed `<alias>:` by default (docs/identity-providers.md).")
    username_prefix: str | None = Field(default=None, description="Prepended to every user name of this issuer "
                                        "(the API server's --oidc-username-prefix, e.g. `oidc:`). Unset: none "
                                        "with one issuer, `<alias>:` (else `<issuer>#`) with several; empty: "
                                        "`system:` user names are refused.")
    groups_prefix: str | None = Field(default=None, description="Prepended to every group of this issuer; "
                                      "unset: as username_prefix; empty: `system:` groups are dropped.")

    @field_validator("username_prefix", "groups_prefix")
    @classmethod
    def _safe_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if is_reserved(value) or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
            raise ValueError("expected a prefix such as 'oidc:', not starting with 'system:', "
                             "without spaces")
        return value


class ProxyOidcSection(ValidatorKeys):
    """``kube_aad_proxy.oidc``: whose tokens kubectl may present."""

    issuers: list[ProxyIssuerSection] = Field(default=[], description="Trusted issuers (none: every request "
                                              "passes with the caller's own credentials).")
    group_source: OptionalGroupSource = Field(default=None, description="Group overage resolution "
                                              "(unset: overage tokens are refused).")


class ProxyLimitsSection(ConfigModel):
    """``kube_aad_proxy.limits``: the slow-loris and idle bounds."""

    head_timeout_seconds: float = Field(default=HEAD_TIMEOUT, gt=0, description="A request head must be "
                                        "complete this long after its first byte.")
    tls_handshake_timeout_seconds: float = Field(default=SSL_HANDSHAKE_TIMEOUT, gt=0, description="TCP accept "
                                                 "to a finished TLS handshake.")
    max_preauth_connections: int = Field(default=MAX_PREAUTH_CONNECTIONS, ge=1, description="Connections held "
                                         "before their first head is complete; beyond: closed at once.")
    idle_timeout_seconds: float = Field(default=IDLE_TIMEOUT, gt=0, description="A connection with nothing in "
                                        "flight is closed after this.")

    def proxy_kwargs(self) -> dict[str, Any]:
        """The ``KubeAadProxyConfig`` keyword arguments these keys set."""
        return {"head_timeout": self.head_timeout_seconds,
                "tls_handshake_timeout": self.tls_handshake_timeout_seconds,
                "max_preauth_connections": self.max_preauth_connections,
                "idle_timeout": self.idle_timeout_seconds}


class KubeAadProxySection(ConfigModel):
    """``kube_aad_proxy``: the in-cluster TLS endpoint kubectl reaches (needed unless `forward_to`)."""

    listen: str = Field(default="127.0.0.1:0", description="`host:port` it listens on (port 0: any free port).")
    serving_cert_file: str | None = Field(default=None, description="The cluster's serving certificate: leaf "
                                          "+ CA chain, PEM (required).")
    serving_key_file: str | None = Field(default=None, description="Its private key, PEM (required).")
    upstream_url: str | None = Field(default=None, description="The API server, `https://host[:port]` (required).")
    upstream_ca_file: str | None = Field(default=None, description="CA bundle of the API server's certificate (required).")
    upstream_token_file: str | None = Field(default=None, description="The agent's service-account token, sent "
                                            "with impersonation headers.")
    oidc: ProxyOidcSection = Field(default=ProxyOidcSection(), description="Trusted OIDC issuers.")
    impersonate_with: Literal["oid", "upn"] = Field(default="oid", description="Which claim becomes Impersonate-User.")
    limits: ProxyLimitsSection = Field(default=ProxyLimitsSection(), description="Slow-loris and idle bounds.")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host_port(value)
        return value

    @field_validator("upstream_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value:
            url = urlsplit(value)
            if url.scheme != "https" or not url.hostname or url.path not in ("", "/") or url.query:
                raise ValueError("expected the API server's https://host[:port] URL (no path)")
        return value


def host_port(value: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); IPv6 as ``[::1]:port``.

    Raises:
        ValueError: not host:port.
    """
    return parse_host_port(value)
