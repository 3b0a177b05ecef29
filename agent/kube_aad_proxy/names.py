"""What a token's user name and groups become for the API server.

Kubernetes reserves the ``system:`` prefix (``system:masters`` is
cluster-admin, ``system:admin``, ``system:serviceaccount:...``, nodes). A token
must never be able to claim one, however its issuer was configured. Like the
API server's own ``--oidc-username-prefix`` / ``--oidc-groups-prefix``, each
trusted issuer may carry prefixes (agent config
``kube_aad_proxy.oidc.issuers[].username_prefix`` / ``groups_prefix``):

- with a prefix, every name from that issuer is prefixed (``oidc:system:masters``
  is an ordinary group nobody bound to anything);
- without one, a ``system:`` user name is refused (403) and ``system:``
  groups are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

RESERVED_PREFIX = "system:"


def is_reserved(name: str) -> bool:
    """Whether ``name`` is in Kubernetes' reserved ``system:`` namespace (any case:
    refusing ``System:`` too costs nothing and survives a case-folding proxy)."""
    return name[: len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX


@dataclass(frozen=True)
class NamePrefixes:
    """The prefixes of one issuer's names; ``""`` = none.

    Raises:
        ValueError: a prefix that is itself reserved or not a header-safe string.
    """

    username: str = ""
    groups: str = ""

    def __post_init__(self) -> None:
        for label, value in (("username_prefix", self.username), ("groups_prefix", self.groups)):
            if value and is_reserved(value):
                raise ValueError(f"{label} {value!r} must not start with {RESERVED_PREFIX!r}")
            if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
                raise ValueError(f"{label} must not contain spaces or control characters")


@dataclass(frozen=True)
class MappedNames:
    """A principal's names as the API server will see them."""

    username: str | None  # None: refused (a reserved name and no prefix)
    groups: tuple[str, ...]
    dropped_groups: int


class NameMapper:
    """Applies the issuer's prefixes, or the reserved-name rules without them.

    Args:
        prefixes: issuer (exact ``iss``) -> its prefixes; issuers not listed have none.
    """

    def __init__(self, prefixes: Mapping[str, NamePrefixes] | None = None) -> None:
        self.prefixes = dict(prefixes or {})

    def map(self, issuer: str, username: str, groups: Iterable[str]) -> MappedNames:
        """The user name and groups to impersonate for a token of ``issuer``."""
        prefixes = self.prefixes.get(issuer, NamePrefixes())
        if prefixes.username:
            user: str | None = prefixes.username + username
        else:
            user = None if is_reserved(username) else username
        all_groups = tuple(groups)
        if prefixes.groups:
            kept = tuple(prefixes.groups + g for g in all_groups)
        else:
            kept = tuple(g for g in all_groups if not is_reserved(g))
        return MappedNames(user, kept, len(all_groups) - len(kept))
