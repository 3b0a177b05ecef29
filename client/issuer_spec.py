"""``arcctl connect --oidc-issuer URL[,key=value...]``: one issuer kube-aad-proxy
trusts, with its own audience, CA and names (docs/identity-providers.md).

Keys: ``audience``, ``ca_file`` (PEM, read now), ``alias``, ``username_prefix``,
``groups_prefix``. Given several times, every issuer is trusted; with more than
one, the agent prefixes each issuer's names (``<alias>:`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass

from client.errors import ConfigError

KEYS = ("audience", "ca_file", "alias", "username_prefix", "groups_prefix")


@dataclass(frozen=True)
class IssuerSpec:
    """One ``--oidc-issuer`` value, parsed."""

    issuer: str
    audience: str | None = None
    ca_file: str | None = None
    alias: str | None = None
    username_prefix: str | None = None
    groups_prefix: str | None = None

    def naming(self) -> dict[str, str]:
        """alias / username_prefix / groups_prefix, those that are set."""
        return {k: v for k in ("alias", "username_prefix", "groups_prefix") if (v := getattr(self, k)) is not None}


def parse_issuer_spec(value: str) -> IssuerSpec:
    """``URL[,key=value...]`` -> :class:`IssuerSpec`.

    Raises:
        ConfigError: one line naming the bad part and the keys there are.
    """
    url, *parts = value.split(",")
    if not url.startswith("https://"):
        raise ConfigError(f"--oidc-issuer {url!r}: expected the issuer's https:// URL, exactly as its tokens' iss")
    options: dict[str, str] = {}
    for part in parts:
        key, sep, val = part.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"--oidc-issuer {url}: {part!r} is not key=value with a key of "
                              f"{', '.join(KEYS)}")
        if key in options:
            raise ConfigError(f"--oidc-issuer {url}: {key} is given twice")
        options[key] = val
    return IssuerSpec(url, **options)
