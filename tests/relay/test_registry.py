"""Cluster registry and role store on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from certs import generate_key_pair
from relay import (
    Cluster,
    RoleAssignment,
    SqliteDatabase,
    SqliteRegistry,
    SqliteRoleStore,
    scope_covers,
)


def _cluster(rg: str = "rg1", name: str = "alpha") -> Cluster:
    return Cluster(name=name, resource_group=rg,
                   agent_public_key_certificate=generate_key_pair("x").certificate_pem.decode(),
                   location="westeurope", tls_server_name="kube-aad-proxy.local")


async def test_registry_creates_reads_updates_deletes(tmp_path: Path) -> None:
    """PUT creates then updates (keeping status), GET/LIST read, DELETE removes."""
    registry = SqliteRegistry(SqliteDatabase(tmp_path / "r.db"))
    stored, created = await registry.put(_cluster())
    assert created and stored.id == "rg1/alpha" and stored.connectivity_status == "Connecting"
    assert stored.created_at.endswith("Z")
    await registry.set_connectivity("rg1/alpha", "Connected")
    await registry.set_metadata("rg1/alpha", {"agentVersion": "0.1.0", "kubernetesVersion": "v1.33.0",
                                        "totalNodeCount": "3", "totalCoreCount": 12, "evil": "x"})
    updated, created = await registry.put(_cluster())
    assert not created
    assert updated.connectivity_status == "Connected"
    assert updated.total_node_count == 3 and updated.kubernetes_version == "v1.33.0"
    assert updated.created_at == stored.created_at
    await registry.put(_cluster("rg2", "beta"))
    assert [c.id for c in await registry.list()] == ["rg1/alpha", "rg2/beta"]
    assert [c.id for c in await registry.list("rg2")] == ["rg2/beta"]
    assert await registry.get("rg1/alpha") is not None
    assert await registry.delete("rg1/alpha") and not await registry.delete("rg1/alpha")
    assert await registry.get("rg1/alpha") is None
    assert await registry.ping()


async def test_registry_survives_reopen(tmp_path: Path) -> None:
    """Everything is in one file: a new process (new connection) sees it."""
    path = tmp_path / "r.db"
    db = SqliteDatabase(path)
    await SqliteRegistry(db).put(_cluster())
    await SqliteRoleStore(db).put(RoleAssignment("a1", "user-1", "User", "viewer", "/"))
    db.close()
    db2 = SqliteDatabase(path)
    assert await SqliteRegistry(db2).get("rg1/alpha") is not None
    assert await SqliteRoleStore(db2).get("a1") is not None


def test_registry_json_uses_camel_case(tmp_path: Path) -> None:
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


async def test_roles_grant_by_role_group_and_bootstrap_admin(tmp_path: Path) -> None:
    """Roles grant their actions at their scope; groups count; bootstrap admins get all."""
    roles = SqliteRoleStore(SqliteDatabase(tmp_path / "r.db"), bootstrap_admins=["boss"])
    await roles.put(RoleAssignment("a1", "user-1", "User", "cluster-user", "/resourceGroups/rg1/clusters/a"))
    await roles.put(RoleAssignment("a2", "group-v", "Group", "viewer", "/resourceGroups/rg2"))
    await roles.put(RoleAssignment("a3", "user-3", "User", "onboarding", "/"))
    a = "/resourceGroups/rg1/clusters/a"
    assert await roles.allowed({"user-1"}, "connect", a)
    assert not await roles.allowed({"user-1"}, "connect", "/resourceGroups/rg1/clusters/b")
    assert not await roles.allowed({"user-1"}, "write", a)
    assert await roles.allowed({"user-2", "group-v"}, "read", "/resourceGroups/rg2/clusters/x")
    assert not await roles.allowed({"group-v"}, "connect", "/resourceGroups/rg2/clusters/x")
    assert await roles.allowed({"user-3"}, "write", a) and not await roles.allowed({"user-3"}, "connect", a)
    assert not await roles.allowed({"user-3"}, "manage_roles", "/")
    assert await roles.allowed({"boss"}, "manage_roles", "/")
    assert not await roles.allowed(set(), "read", a)
