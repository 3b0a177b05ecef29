"""A principal belongs to its issuer (OIDC Core 5.7: ``sub`` is unique only
within its ``iss``; an ``oid`` or a group id is whatever the issuer says it is).

When one issuer is trusted its names need no qualifier: existing single-issuer
setups and their Kubernetes RBAC keep working. When several are trusted, every
name an issuer's token yields carries that issuer's prefix, as the API server's
``--oidc-username-prefix`` / ``--oidc-groups-prefix`` do, so no issuer can mint
a name another issuer's principal holds. The rule (docs/identity-providers.md):

- one issuer: no prefix unless configured;
- several: by default ``<alias>:`` (the issuer's ``alias`` key), else
  ``<issuer URL>#`` (the API server's own default form);
- several and configured: every prefix must be non-empty, and none may begin
  another issuer's (then a prefixed name tells its issuer apart).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ALIAS_RULE = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, not 'system'"


@dataclass(frozen=True)
class IssuerNaming:
    """How one trusted issuer's names are written.

    Attributes:
        issuer: the exact ``iss``.
        alias: a short name for the issuer (``None``: none).
        username_prefix: configured prefix of its user names (``None``: the default).
        groups_prefix: configured prefix of its group names (``None``: the default).
    """

    issuer: str
    alias: str | None = None
    username_prefix: str | None = None
    groups_prefix: str | None = None


@dataclass(frozen=True)
class Prefixes:
    """The prefixes in force for one issuer (``""``: none)."""

    username: str
    groups: str


def default_prefix(issuer: str, alias: str | None) -> str:
    """``<alias>:``, else ``<issuer>#``: the prefix of an issuer among several."""
    return f"{alias}:" if alias else f"{issuer}#"


def resolve_prefixes(items: Sequence[IssuerNaming]) -> dict[str, Prefixes]:
    """Issuer -> the prefixes in force, by the rule above.

    Raises:
        ValueError: one line: a bad or repeated alias, or prefixes that would let
            one issuer's name be read as another's.
    """
    check_aliases([(item.issuer, item.alias) for item in items])
    several = len(items) > 1
    out: dict[str, Prefixes] = {}
    for item in items:
        default = default_prefix(item.issuer, item.alias) if several else ""
        out[item.issuer] = Prefixes(
            default if item.username_prefix is None else item.username_prefix,
            default if item.groups_prefix is None else item.groups_prefix,
        )
    if several:
        for kind in ("username", "groups"):
            _check_distinct(kind, {issuer: getattr(p, kind) for issuer, p in out.items()}, len(items))
    return out


def check_aliases(items: Sequence[tuple[str, str | None]]) -> None:
    """Each (issuer, alias) alias well-formed and naming one issuer.

    Raises:
        ValueError: one line naming the alias and what to do.
    """
    aliases: dict[str, str] = {}
    for issuer, alias in items:
        if alias is None:
            continue
        # "system" would make the prefix "system:", Kubernetes' reserved namespace.
        if not ALIAS_RE.fullmatch(alias) or alias.lower() == "system":
            raise ValueError(f"alias {alias!r} of issuer {issuer}: expected {ALIAS_RULE}")
        if alias in aliases:
            raise ValueError(f"alias {alias!r} names two issuers ({aliases[alias]} and "
                             f"{issuer}): give each issuer its own alias")
        aliases[alias] = issuer


def _check_distinct(kind: str, prefixes: dict[str, str], count: int) -> None:
    for issuer, prefix in prefixes.items():
        if not prefix:
            raise ValueError(f"{kind}_prefix of issuer {issuer} is empty while {count} issuers are "
                             f"trusted, so its names could be another issuer's: remove the key (default "
                             f"'<alias>:') or set a prefix of its own")
        for other, theirs in prefixes.items():
            if other != issuer and theirs.startswith(prefix):
                raise ValueError(f"{kind}_prefix {prefix!r} of issuer {issuer} begins issuer {other}'s "
                                 f"{theirs!r}, so their names could collide: give each issuer a prefix "
                                 "no other begins with")
