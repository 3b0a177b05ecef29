"""Cluster registry and role store: one suite, two backends (a real SQLite
file and a real PostgreSQL server, tests/support/postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from certs import generate_key_pair
from relay import (
    Cluster,
    ClusterRegistry,
    RoleAssignment,
    RoleStore,
    SqliteDatabase,
    SqliteRegistry,
    SqliteRoleStore,
    scope_covers,
)
from relay.migrations import MIGRATIONS


class Backend:
    """Opens the registry and role store of one database, again and again
    (each open is a new connection, as a restarted relay would have)."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location
        self._open: list[Any] = []

    async def open(self, bootstrap_admins: Iterable[tuple[str, str]] = ()) -> tuple[ClusterRegistry, RoleStore]:
        if self.kind == "sqlite":
            db = SqliteDatabase(self.location)
            self._open.append(db)
            return SqliteRegistry(db), SqliteRoleStore(db, bootstrap_admins)
        from relay.postgres_store import PostgresDatabase, PostgresRegistry, PostgresRoleStore

        pg = await PostgresDatabase.connect(self.location)
        self._open.append(pg)
        return PostgresRegistry(pg), PostgresRoleStore(pg, bootstrap_admins)

    async def close(self) -> None:
        for db in reversed(self._open):
            result = db.close()
            if asyncio.iscoroutine(result):
                await result
        self._open.clear()


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    location = (str(tmp_path / "r.db") if request.param == "sqlite"
                else request.getfixturevalue("postgres_dsn"))
    store = Backend(request.param, location)
    yield store
    await store.close()


ISS = "https://issuer-a.example/tenant/v2.0"
OTHER = "https://issuer-b.example/"


def _cluster(rg: str = "rg1", name: str = "alpha") -> Cluster:
    return Cluster(name=name, resource_group=rg,
                   agent_public_key_certificate=generate_key_pair("x").certificate_pem.decode(),
                   location="westeurope", tls_server_name="kube-aad-proxy.local")


async def test_registry_creates_reads_updates_deletes(backend: Backend) -> None:
    """PUT creates then updates (keeping status), GET/LIST read, DELETE removes."""
    registry, _ = await backend.open()
    stored, created = await registry.put(_cluster())
    assert created and stored.id == "rg1/alpha" and stored.connectivity_status == "Connecting"
    assert stored.created_at.endswith("Z")
    await registry.set_connectivity("rg1/alpha", "Connected")
    await registry.set_metadata("rg1/alpha", {"agentVersion": "0.1.0", "kubernetesVersion": "v1.33.0",
                                              "totalNodeCount": "3", "totalCoreCount": 12, "evil": "x"})
    new_key = _cluster()
    updated, created = await registry.put(new_key)
    assert not created
    assert updated.connectivity_status == "Connected"
    assert updated.total_node_count == 3 and updated.kubernetes_version == "v1.33.0"
    assert updated.created_at == stored.created_at
    assert updated.agent_public_key_certificate == new_key.agent_public_key_certificate
    assert await registry.agent_certificate("rg1/alpha") == new_key.agent_public_key_certificate
    await registry.put(_cluster("rg2", "beta"))
    assert [c.id for c in await registry.list()] == ["rg1/alpha", "rg2/beta"]
    assert [c.id for c in await registry.list("rg2")] == ["rg2/beta"]
    assert await registry.ids() == ("rg1/alpha", "rg2/beta")
    await registry.apply_updates({"rg2/beta": {"connectivity_status": "Offline"}})
    beta = await registry.get("rg2/beta")
    assert beta is not None and beta.connectivity_status == "Offline"
    with pytest.raises(ValueError):
        await registry.apply_updates({"rg2/beta": {"agent_public_key_certificate": "x"}})
    assert await registry.get("rg1/alpha") is not None
    assert await registry.delete("rg1/alpha") and not await registry.delete("rg1/alpha")
    assert await registry.get("rg1/alpha") is None
    assert await registry.agent_certificate("rg1/alpha") is None
    assert await registry.ping()


async def test_registry_survives_reopen(backend: Backend) -> None:
    """Everything is in the database: a new connection (a restarted relay) sees it."""
    registry, roles = await backend.open()
    await registry.put(_cluster())
    await roles.put(RoleAssignment("a1", "user-1", "User", "viewer", "/"))
    await backend.close()
    registry2, roles2 = await backend.open()
    assert await registry2.get("rg1/alpha") is not None
    assert await roles2.get("a1") is not None


async def test_roles_put_replaces_and_keeps_created_at(backend: Backend) -> None:
    """A second PUT of an assignment id replaces it, keeping its creation time."""
    _, roles = await backend.open()
    first, created = await roles.put(RoleAssignment("a1", "user-1", "User", "viewer", "/"))
    assert created and first.created_at.endswith("Z")
    second, created = await roles.put(RoleAssignment("a1", "user-1", "User", "admin", "/"))
    assert not created and second.created_at == first.created_at and second.role == "admin"
    assert [a.role for a in await roles.list_all()] == ["admin"]
    assert await roles.delete("a1") and not await roles.delete("a1")
    assert await roles.list_all() == []


def test_registry_json_uses_camel_case() -> None:
    """The REST shape has the documented camelCase fields."""
    body = _cluster().to_json()
    for key in ("id", "name", "resourceGroup", "location", "agentPublicKeyCertificate",
                "servingCaCertificate", "tlsServerName", "connectivityStatus",
                "lastConnectivityTime", "agentVersion", "kubernetesVersion", "totalNodeCount",
                "totalCoreCount", "provisioningState", "createdAt"):
        assert key in body


def test_roles_scope_covers_nested_scopes() -> None:
    """'/' covers all; a resource group covers its clusters but not a prefix-named group."""
    assert scope_covers("/", "/resourceGroups/rg1/clusters/a")
    assert scope_covers("/resourceGroups/rg1", "/resourceGroups/rg1/clusters/a")
    assert not scope_covers("/resourceGroups/rg1", "/resourceGroups/rg10/clusters/a")
    assert not scope_covers("/resourceGroups/rg1/clusters/a", "/resourceGroups/rg1")


async def test_roles_grant_by_role_group_and_bootstrap_admin(backend: Backend) -> None:
    """Roles grant their actions at their scope; groups count; bootstrap admins get all."""
    _, roles = await backend.open(bootstrap_admins=[(ISS, "boss")])
    await roles.put(RoleAssignment("a1", "user-1", "User", "cluster-user", "/resourceGroups/rg1/clusters/a",
                                   principal_issuer=ISS))
    await roles.put(RoleAssignment("a2", "group-v", "Group", "viewer", "/resourceGroups/rg2", principal_issuer=ISS))
    await roles.put(RoleAssignment("a3", "user-3", "User", "onboarding", "/", principal_issuer=ISS))
    a = "/resourceGroups/rg1/clusters/a"
    assert await roles.allowed(ISS, {"user-1"}, "connect", a)
    assert not await roles.allowed(ISS, {"user-1"}, "connect", "/resourceGroups/rg1/clusters/b")
    assert not await roles.allowed(ISS, {"user-1"}, "write", a)
    assert await roles.allowed(ISS, {"user-2", "group-v"}, "read", "/resourceGroups/rg2/clusters/x")
    assert not await roles.allowed(ISS, {"group-v"}, "connect", "/resourceGroups/rg2/clusters/x")
    assert await roles.allowed(ISS, {"user-3"}, "write", a) and not await roles.allowed(ISS, {"user-3"}, "connect", a)
    assert not await roles.allowed(ISS, {"user-3"}, "manage_roles", "/")
    assert await roles.allowed(ISS, {"boss"}, "manage_roles", "/")
    assert not await roles.allowed(ISS, set(), "read", a)
    assert [r.id for r in await roles.for_principals(ISS, {"user-1", "group-v"})] in (["a1", "a2"], ["a2", "a1"])


async def test_roles_match_only_their_own_issuer(backend: Backend) -> None:
    """A principal belongs to its issuer (issue 17 item 6): the same ids from
    another issuer hold neither the assignments nor the bootstrap admin role."""
    _, roles = await backend.open(bootstrap_admins=[(ISS, "boss")])
    await roles.put(RoleAssignment("a1", "user-1", "User", "admin", "/", principal_issuer=ISS))
    await roles.put(RoleAssignment("a2", "group-v", "Group", "viewer", "/", principal_issuer=ISS))
    for ids in ({"user-1"}, {"group-v"}, {"boss"}):
        assert await roles.allowed(ISS, ids, "read", "/")
        assert not await roles.allowed(OTHER, ids, "read", "/")
        assert not await roles.allowed("", ids, "read", "/")
    assert await roles.for_principals(OTHER, {"user-1", "group-v"}) == []
    found = await roles.get("a1")
    assert found is not None and found.principal_issuer == ISS and found.to_json()["principalIssuer"] == ISS


async def test_roles_made_before_issuers_are_claimed_for_the_only_issuer(backend: Backend) -> None:
    """Rows without an issuer (made before migration 2) match nobody until
    claimed for the relay's only issuer; claiming is idempotent."""
    _, roles = await backend.open()
    await roles.put(RoleAssignment("old", "user-1", "User", "viewer", "/"))
    await roles.put(RoleAssignment("new", "user-2", "User", "viewer", "/", principal_issuer=OTHER))
    assert await roles.count_unscoped() == 1
    assert not await roles.allowed(ISS, {"user-1"}, "read", "/")
    assert await roles.claim_unscoped(ISS) == 1
    assert await roles.claim_unscoped(ISS) == 0 and await roles.count_unscoped() == 0
    assert await roles.allowed(ISS, {"user-1"}, "read", "/")
    assert [(a.id, a.principal_issuer) for a in await roles.list_all()] == [("new", OTHER), ("old", ISS)]


async def test_postgresql_concurrent_migrations_apply_each_once(postgres_dsn: str) -> None:
    """N relays starting at once against one fresh database: every migration
    run succeeds and schema_version holds one row per migration."""
    import asyncpg

    from relay.postgres_store import PostgresDatabase

    dbs = await asyncio.gather(*(PostgresDatabase.connect(postgres_dsn, min_size=1, max_size=1)
                                 for _ in range(8)))
    try:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
        finally:
            await conn.close()
        assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]
    finally:
        await asyncio.gather(*(db.close() for db in dbs))
