"""Role assignments: who may do what, where.

Roles (ARCHITECTURE.md, identity and authorization):

- ``admin``: everything, including role assignments, at its scope.
- ``onboarding``: register (create/update) and delete clusters, and read them.
- ``viewer``: list and show clusters.
- ``cluster-user``: show a cluster and connect to it.

Scopes: ``/`` (everything), ``/resourceGroups/RG`` (a resource group and its
clusters), ``/resourceGroups/RG/clusters/NAME`` (one cluster). An assignment at
a scope covers every scope below it. ``admins`` from the relay config are
bootstrap admins on ``/`` and are not stored.

A principal belongs to its issuer (docs/identity-providers.md): an assignment
names its assignee's issuer (``principal_issuer``, the exact ``iss``) beside
its id and matches only tokens of that issuer; a bootstrap admin is an
(issuer, id) pair.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeAlias

from relay import names
from relay.kubernetes_roles import KUBERNETES_ROLE_ACTIONS, scope_role_errors
from relay.migrations import claim_unscoped_sqlite, count_unscoped_sqlite
from relay.registry import SqliteDatabase, utc_now

Action = Literal["read", "write", "delete", "connect", "manage_roles"]
ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "write", "delete", "connect", "manage_roles"}),
    "onboarding": frozenset({"read", "write", "delete"}),
    "viewer": frozenset({"read"}),
    "cluster-user": frozenset({"read", "connect"}),
    **KUBERNETES_ROLE_ACTIONS,  # enforced in the cluster (relay/kubernetes_roles.py)
}
PRINCIPAL_TYPES = ("User", "Group", "ServicePrincipal")
#: (issuer, id): a principal id as one issuer means it.
IssuerScopedId: TypeAlias = tuple[str, str]
_DecisionKey: TypeAlias = tuple[str, frozenset[str], str, str]
# Checked by relay.names (fullmatch, closed alphabet).
_SCOPE_RE = names.SCOPE_RE
_ID_RE = names.ASSIGNMENT_ID_RE


def cluster_scope(resource_group: str, name: str) -> str:
    """The scope string of one cluster."""
    return f"/resourceGroups/{resource_group}/clusters/{name}"


def group_scope(resource_group: str) -> str:
    """The scope string of one resource group."""
    return f"/resourceGroups/{resource_group}"


def valid_scope(scope: str) -> bool:
    """Whether ``scope`` is one of the three scope shapes."""
    return names.valid_scope(scope)


def valid_assignment_id(value: str) -> bool:
    """Assignment ids are URL path segments: short, no slash."""
    return names.valid_assignment_id(value)


def scope_covers(outer: str, inner: str) -> bool:
    """Whether an assignment at ``outer`` applies to ``inner``."""
    if outer == "/":
        return True
    return inner == outer or inner.startswith(outer + "/")


@dataclass(frozen=True)
class RoleAssignment:
    """One assignment of ``role`` to a principal at ``scope``."""

    id: str
    principal_id: str
    principal_type: str
    role: str
    scope: str
    created_at: str = ""
    #: the exact ``iss`` of the assignee's tokens ("" only on rows made before
    #: issuers were stored and not yet claimed: they match nobody)
    principal_issuer: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principalId": self.principal_id,
            "principalIssuer": self.principal_issuer,
            "principalType": self.principal_type,
            "role": self.role,
            "scope": self.scope,
            "createdAt": self.created_at,
        }


# A user or app name (``alice@contoso.example``): what upn, preferred_username
# and email hold, never an object id or ``<iss>#<sub>``.
_NAME_RE = re.compile(r"[^@#/:\s]+@[^@#/:\s]+\.[^@#/:\s]+")


def looks_like_name(principal_id: str) -> bool:
    """Whether ``principal_id`` is an email-like user name rather than an id."""
    return bool(_NAME_RE.fullmatch(principal_id))


def name_assignment_error(principal_id: str) -> str:
    """Why an assignment to a user name is refused when only ids match, and the fix."""
    return (f"principalId {principal_id!r} is a user name, which matches no token here (names can be "
            "changed by their owner; the relay matches them only with authorization.match_mutable_claims): "
            "pass the principal's object id (oid) instead, with principalIssuer when the relay trusts "
            "several issuers (arcctl role assign --assignee OBJECT_ID --assignee-issuer ISSUER)")


def assignment_errors(body: dict[str, Any]) -> list[str]:
    """What is wrong with a roleAssignment request body (empty when valid)."""
    errors = []
    if not names.valid_principal_id(body.get("principalId")):
        errors.append(f"principalId is required: 1-{names.MAX_PRINCIPAL_ID} characters, "
                      "no whitespace or control characters")
    principal_type = body.get("principalType", "User")
    if not isinstance(principal_type, str) or principal_type not in PRINCIPAL_TYPES:
        errors.append(f"principalType must be one of {', '.join(PRINCIPAL_TYPES)}")
    role = body.get("role")
    if not isinstance(role, str) or role not in ROLES:
        errors.append(f"role must be one of {', '.join(ROLES)}")
    if not isinstance(body.get("scope"), str) or not valid_scope(body["scope"]):
        errors.append("scope must be '/', '/resourceGroups/RG', '/resourceGroups/RG/clusters/NAME' "
                      "or '/resourceGroups/RG/clusters/NAME/namespaces/NS'")
    errors += scope_role_errors(role, body.get("scope"))
    return errors


class AuthorizationCache:
    """Recent ``allowed`` decisions, so a flood of OPENs (allowed or not) costs
    a dict lookup each instead of a database query.

    Bounded both ways: an entry lives ``ttl`` seconds, and at most ``entries``
    are kept (least recently used leave first). Any change of role
    assignments made through this relay clears it (:meth:`clear`); a change
    made elsewhere (another replica) is seen within ``ttl``.
    """

    def __init__(self, ttl: float = 5.0, entries: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.entries = entries
        self.clock = clock
        self.hits = 0
        self.misses = 0
        # Bumped by clear(): a decision read from the store before a change
        # committed and answered after it must not be cached (see allowed()).
        self.generation = 0
        self._decisions: OrderedDict[_DecisionKey, tuple[bool, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._decisions)

    def get(self, key: _DecisionKey) -> bool | None:
        """The cached decision, or None when absent or expired."""
        found = self._decisions.get(key)
        if found is None or found[1] <= self.clock():
            if found is not None:
                del self._decisions[key]
            self.misses += 1
            return None
        self._decisions.move_to_end(key)
        self.hits += 1
        return found[0]

    def put(self, key: _DecisionKey, decision: bool) -> None:
        if self.ttl <= 0 or self.entries <= 0:
            return
        self._decisions[key] = (decision, self.clock() + self.ttl)
        self._decisions.move_to_end(key)
        while len(self._decisions) > self.entries:
            self._decisions.popitem(last=False)

    def clear(self) -> None:
        self._decisions.clear()
        self.generation += 1


class RoleStore(Protocol):
    """Role assignments plus the bootstrap admins; every call a coroutine.

    ``allowed`` answers from :attr:`cache` (an :class:`AuthorizationCache`)
    when it can; ``put`` and ``delete`` clear that cache.
    """

    bootstrap_admins: frozenset[IssuerScopedId]
    cache: AuthorizationCache

    async def put(self, assignment: RoleAssignment) -> tuple[RoleAssignment, bool]:
        """Create or replace; returns (stored, created)."""
        ...

    async def get(self, assignment_id: str) -> RoleAssignment | None: ...

    async def delete(self, assignment_id: str) -> bool: ...

    async def list_all(self) -> list[RoleAssignment]: ...

    async def for_principals(self, issuer: str, principal_ids: Iterable[str]) -> list[RoleAssignment]:
        """Assignments of ``issuer`` held by any of ``principal_ids`` (a user and its groups)."""
        ...

    async def allowed(self, issuer: str, principal_ids: Iterable[str], action: Action, scope: str) -> bool:
        """Whether any of ``principal_ids`` of ``issuer`` holds a role granting
        ``action`` at ``scope`` (directly or through a covering scope)."""
        ...

    def is_bootstrap_admin(self, issuer: str, principal_ids: Iterable[str]) -> bool:
        """Whether one of ``principal_ids`` of ``issuer`` is among ``admins``."""
        ...

    async def claim_unscoped(self, issuer: str) -> int:
        """Give rows stored before issuers were (``principal_issuer`` "") to
        ``issuer``, the relay's only one; returns how many."""
        ...

    async def count_unscoped(self) -> int:
        """Rows that name no issuer (they match nobody)."""
        ...


def assignment_from_row(row: Any) -> RoleAssignment:
    """A :class:`RoleAssignment` from a database row with the table's column names."""
    return RoleAssignment(
        row["id"], row["principal_id"], row["principal_type"], row["role"], row["scope"],
        row["created_at"], row["principal_issuer"],
    )


class CachedAuthorization:
    """``allowed`` for a role store: bootstrap admins first, then the cache,
    then the store's ``for_principals``."""

    bootstrap_admins: frozenset[IssuerScopedId]
    cache: AuthorizationCache

    async def for_principals(self, issuer: str, principal_ids: Iterable[str]) -> list[RoleAssignment]:
        raise NotImplementedError

    def is_bootstrap_admin(self, issuer: str, principal_ids: Iterable[str]) -> bool:
        """Whether one of ``principal_ids`` of ``issuer`` is among ``admins``."""
        return any((issuer, i) in self.bootstrap_admins for i in principal_ids)

    async def allowed(self, issuer: str, principal_ids: Iterable[str], action: Action, scope: str) -> bool:
        ids = frozenset(principal_ids)
        if not issuer:  # "" names the unclaimed rows, never a caller
            return False
        if self.is_bootstrap_admin(issuer, ids):
            return True
        key = (issuer, ids, action, scope)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        generation = self.cache.generation
        decision = any(
            action in ROLES.get(a.role, ()) and scope_covers(a.scope, scope)
            for a in await self.for_principals(issuer, ids)
        )
        if self.cache.generation == generation:  # no change committed meanwhile
            self.cache.put(key, decision)
        return decision


class SqliteRoleStore(CachedAuthorization):
    """Role assignments in the relay's SQLite file (statements on the
    database's worker thread), plus the bootstrap admins."""

    def __init__(self, db: SqliteDatabase, bootstrap_admins: Iterable[IssuerScopedId] = (),
                 cache: AuthorizationCache | None = None) -> None:
        self.db = db
        self.bootstrap_admins = frozenset(bootstrap_admins)
        self.cache = cache or AuthorizationCache()

    async def put(self, assignment: RoleAssignment) -> tuple[RoleAssignment, bool]:
        """Create or replace; returns (stored, created)."""
        stored, created = await self.db.run(self._put, assignment)
        self.cache.clear()
        return stored, created

    def _put(self, assignment: RoleAssignment) -> tuple[RoleAssignment, bool]:
        with self.db.transaction() as cur:
            old = cur.execute(
                "SELECT created_at FROM role_assignments WHERE id = ?", (assignment.id,)
            ).fetchone()
            created_at = old["created_at"] if old else utc_now()
            cur.execute(
                "INSERT OR REPLACE INTO role_assignments "
                "(id, principal_id, principal_type, role, scope, created_at, principal_issuer) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (assignment.id, assignment.principal_id, assignment.principal_type,
                 assignment.role, assignment.scope, created_at, assignment.principal_issuer),
            )
        return replace(assignment, created_at=created_at), old is None

    async def get(self, assignment_id: str) -> RoleAssignment | None:
        return await self.db.run(self._get, assignment_id)

    def _get(self, assignment_id: str) -> RoleAssignment | None:
        with self.db.reading() as cur:
            row = cur.execute("SELECT * FROM role_assignments WHERE id = ?", (assignment_id,)).fetchone()
        return assignment_from_row(row) if row else None

    async def delete(self, assignment_id: str) -> bool:
        deleted = await self.db.run(self._delete, assignment_id)
        self.cache.clear()
        return deleted

    def _delete(self, assignment_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM role_assignments WHERE id = ?", (assignment_id,))
            return cur.rowcount > 0

    async def list_all(self) -> list[RoleAssignment]:
        return await self.db.run(self._list_all)

    def _list_all(self) -> list[RoleAssignment]:
        with self.db.reading() as cur:
            rows = cur.execute("SELECT * FROM role_assignments ORDER BY id").fetchall()
        return [assignment_from_row(r) for r in rows]

    async def for_principals(self, issuer: str, principal_ids: Iterable[str]) -> list[RoleAssignment]:
        """Assignments of ``issuer`` held by any of ``principal_ids`` (a user and its groups)."""
        ids = sorted(set(principal_ids))
        if not ids or not issuer:
            return []
        return await self.db.run(self._for_principals, issuer, ids)

    def _for_principals(self, issuer: str, ids: list[str]) -> list[RoleAssignment]:
        marks = ", ".join("?" for _ in ids)
        with self.db.reading() as cur:
            rows = cur.execute(
                "SELECT * FROM role_assignments WHERE principal_issuer = ? "
                f"AND principal_id IN ({marks})", [issuer, *ids]
            ).fetchall()
        return [assignment_from_row(r) for r in rows]

    async def claim_unscoped(self, issuer: str) -> int:
        claimed = await self.db.run(self._claim_unscoped, issuer)
        self.cache.clear()
        return claimed

    def _claim_unscoped(self, issuer: str) -> int:
        with self.db.transaction() as cur:
            return claim_unscoped_sqlite(cur, issuer)

    async def count_unscoped(self) -> int:
        return await self.db.run(self._count_unscoped)

    def _count_unscoped(self) -> int:
        with self.db.reading() as cur:
            return count_unscoped_sqlite(cur)
