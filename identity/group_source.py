"""The ``oidc.group_source`` configuration section, shared by the relay and
kube-aad-proxy, and the :class:`~identity.groups.HttpGroupResolver` it builds.

Example (YAML, under ``oidc:`` in either config file)::

    group_source:
      token_endpoint: https://login.example.com/TENANT/oauth2/v2.0/token
      client_id: 2788b2a2-...              # a service principal allowed to read memberships
      client_secret_file: /etc/arc/group-source.secret   # or client_secret: "..." (demo only)
      scope: https://graph.microsoft.com/.default
      endpoint_template: null              # null: the endpoint named in the token's _claim_sources
      allowed_hosts: [graph.microsoft.com] # the credential is never sent anywhere else
      ca_file: null                        # CA for token endpoint and member-groups endpoint
      cache_ttl_seconds: 600

Without this section an overage token (more than 200 groups) is refused:
fail closed, never "no groups".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from identity.groups import DEFAULT_GROUP_CACHE_TTL, ClientCredentialsToken, HttpGroupResolver

# A client secret file is a line of text; anything larger is a wrong path.
MAX_SECRET_BYTES = 16 * 1024


@dataclass(frozen=True)
class GroupSourceSettings:
    """A parsed ``group_source`` section (files already read)."""

    token_endpoint: str
    client_id: str
    client_secret: str
    scope: str
    endpoint_template: str | None = None
    allowed_hosts: tuple[str, ...] | None = None
    ca_pem: bytes | None = None
    cache_ttl: float = DEFAULT_GROUP_CACHE_TTL

    def __repr__(self) -> str:  # never show the secret
        return (f"GroupSourceSettings(token_endpoint={self.token_endpoint!r}, "
                f"client_id={self.client_id!r}, scope={self.scope!r})")

    def build(self) -> HttpGroupResolver:
        """The resolver for ``TokenValidator(group_resolver=...)``."""
        credential = ClientCredentialsToken(self.token_endpoint, self.client_id, self.client_secret,
                                            self.scope, ca_pem=self.ca_pem)
        return HttpGroupResolver(credential, endpoint_template=self.endpoint_template,
                                 allowed_hosts=self.allowed_hosts, ca_pem=self.ca_pem,
                                 cache_ttl=self.cache_ttl)


def _read(base: Path, value: Any, what: str, limit: int) -> bytes:
    path = Path(os.path.expanduser(str(value)))
    path = path if path.is_absolute() else base / path
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror}; fix the path or its permissions") from None
    if len(data) > limit:
        raise ValueError(f"{what} {path} is larger than {limit} bytes")
    return data


def parse_group_source(raw: Any, base_dir: Path, where: str = "oidc.group_source") -> GroupSourceSettings | None:
    """Parse one ``group_source`` mapping (None/empty: no group source).

    Args:
        raw: the YAML value.
        base_dir: relative file paths are resolved against it.
        where: the section's name, for messages.

    Raises:
        ValueError: one line naming the field and the fix.
    """
    if raw in (None, {}, ""):
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping")
    missing = [k for k in ("token_endpoint", "client_id", "scope") if not raw.get(k)]
    if missing:
        raise ValueError(f"{where} needs {', '.join(missing)}")
    if raw.get("client_secret_file"):
        secret = _read(base_dir, raw["client_secret_file"], f"{where}.client_secret_file",
                       MAX_SECRET_BYTES).decode().strip()
    else:
        secret = str(raw.get("client_secret") or "")
    if not secret:
        raise ValueError(f"{where} needs client_secret_file (or client_secret)")
    endpoint = str(raw["token_endpoint"])
    if not endpoint.startswith("https://"):
        raise ValueError(f"{where}.token_endpoint must be an https:// URL")
    hosts = raw.get("allowed_hosts")
    if hosts is not None and (isinstance(hosts, str) or not all(isinstance(h, str) for h in hosts)):
        raise ValueError(f"{where}.allowed_hosts must be a list of host names")
    try:
        ttl = float(raw.get("cache_ttl_seconds", DEFAULT_GROUP_CACHE_TTL))
    except (TypeError, ValueError):
        raise ValueError(f"{where}.cache_ttl_seconds must be a number") from None
    ca_pem = None
    if raw.get("ca_file"):
        ca_pem = _read(base_dir, raw["ca_file"], f"{where}.ca_file", 1 << 20)
    template = raw.get("endpoint_template")
    return GroupSourceSettings(
        token_endpoint=endpoint,
        client_id=str(raw["client_id"]),
        client_secret=secret,
        scope=str(raw["scope"]),
        endpoint_template=str(template) if template else None,
        allowed_hosts=tuple(hosts) if hosts else None,
        ca_pem=ca_pem,
        cache_ttl=max(0.0, ttl),
    )
