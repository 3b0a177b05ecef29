"""Configuration of kube-aad-proxy and the limits it enforces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

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
