"""The cluster registry and role store in PostgreSQL (asyncpg): the shared
database of several relay replicas.

Statements are the SQLite ones' equivalents (relay/registry.py,
relay/roles.py); creates-or-updates are single ``INSERT ... ON CONFLICT``
upserts. The schema comes from relay/migrations.py, applied by
:meth:`PostgresDatabase.connect` under an advisory lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import asyncpg

from relay.migrations import (
    claim_unscoped_postgresql,
    count_unscoped_postgresql,
    migrate_postgresql,
)
from relay.registry import (
    COLUMNS,
    Cluster,
    ClusterList,
    ConnectivityStatus,
    check_writable,
    metadata_columns,
    utc_now,
)
from relay.roles import (
    AuthorizationCache,
    CachedAuthorization,
    IssuerScopedId,
    RoleAssignment,
    assignment_from_row,
)

# Connections one relay holds: enough for the management API and the
# write-behind flush to overlap, few enough for many replicas on one server.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
# A statement (or a pool acquire) not answered within this fails.
COMMAND_TIMEOUT_SECONDS = 10.0


class PostgresDatabase:
    """A connection pool to one PostgreSQL database, migrated on connect."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, password: str | None = None, *,
                      min_size: int = POOL_MIN_SIZE, max_size: int = POOL_MAX_SIZE) -> PostgresDatabase:
        """Open a pool to ``dsn`` (no password in it: ``password`` is given
        apart so it never appears in a URL, a log line or an error) and apply
        the missing migrations."""
        pool = await asyncpg.create_pool(dsn, password=password, min_size=min_size, max_size=max_size,
                                         command_timeout=COMMAND_TIMEOUT_SECONDS)
        try:
            async with pool.acquire() as conn:
                await migrate_postgresql(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()


def _cluster(row: Any) -> Cluster:
    return Cluster(**{c: row[c] for c in COLUMNS})


class PostgresRegistry:
    """``ClusterRegistry`` over a :class:`PostgresDatabase`."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def get(self, cluster_id: str) -> Cluster | None:
        row = await self.db.pool.fetchrow("SELECT * FROM clusters WHERE id = $1", cluster_id)
        return _cluster(row) if row else None

    async def agent_certificate(self, cluster_id: str) -> str | None:
        value = await self.db.pool.fetchval(
            "SELECT agent_public_key_certificate FROM clusters WHERE id = $1", cluster_id)
        return str(value) if value is not None else None

    async def list(self, resource_group: str | None = None) -> ClusterList:
        if resource_group is None:
            rows = await self.db.pool.fetch("SELECT * FROM clusters ORDER BY id")
        else:
            rows = await self.db.pool.fetch(
                "SELECT * FROM clusters WHERE resource_group = $1 ORDER BY id", resource_group)
        return [_cluster(r) for r in rows]

    async def ids(self) -> tuple[str, ...]:
        return tuple(r[0] for r in await self.db.pool.fetch("SELECT id FROM clusters ORDER BY id"))

    async def put(self, cluster: Cluster) -> tuple[Cluster, bool]:
        # One upsert: an update changes only the registration columns; status,
        # agent metadata and created_at stay. xmax = 0 only on a fresh insert.
        stored = replace(cluster, created_at=cluster.created_at or utc_now())
        values = [getattr(stored, c) for c in COLUMNS]
        row = await self.db.pool.fetchrow(
            f"INSERT INTO clusters (id, {', '.join(COLUMNS)}) "
            f"VALUES ($1, {', '.join(f'${i + 2}' for i in range(len(COLUMNS)))}) "
            "ON CONFLICT (id) DO UPDATE SET location = EXCLUDED.location, "
            "agent_public_key_certificate = EXCLUDED.agent_public_key_certificate, "
            "serving_ca_certificate = EXCLUDED.serving_ca_certificate, "
            "tls_server_name = EXCLUDED.tls_server_name "
            "RETURNING *, (xmax = 0) AS inserted",
            stored.id, *values)
        return _cluster(row), bool(row["inserted"])

    async def delete(self, cluster_id: str) -> bool:
        status = await self.db.pool.execute("DELETE FROM clusters WHERE id = $1", cluster_id)
        return bool(status != "DELETE 0")

    async def set_connectivity(self, cluster_id: str, status: ConnectivityStatus) -> None:
        await self.apply_updates({cluster_id: {"connectivity_status": status,
                                               "last_connectivity_time": utc_now()}})

    async def apply_updates(self, batch: dict[str, dict[str, Any]]) -> None:
        """Status/metadata columns of many clusters in one transaction."""
        check_writable(batch)
        async with self.db.pool.acquire() as conn, conn.transaction():
            for cid, columns in batch.items():
                if not columns:
                    continue
                assignments = ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(columns))
                await conn.execute(f"UPDATE clusters SET {assignments} WHERE id = ${len(columns) + 1}",
                                   *columns.values(), cid)

    async def set_metadata(self, cluster_id: str, metadata: dict[str, Any]) -> None:
        await self.apply_updates({cluster_id: {**metadata_columns(metadata),
                                               "last_connectivity_time": utc_now()}})

    async def ping(self) -> bool:
        try:
            return bool(await self.db.pool.fetchval("SELECT 1") == 1)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False


class PostgresRoleStore(CachedAuthorization):
    """Role assignments in PostgreSQL, plus the bootstrap admins."""

    def __init__(self, db: PostgresDatabase, bootstrap_admins: Iterable[IssuerScopedId] = (),
                 cache: AuthorizationCache | None = None) -> None:
        self.db = db
        self.bootstrap_admins = frozenset(bootstrap_admins)
        self.cache = cache or AuthorizationCache()

    async def put(self, assignment: RoleAssignment) -> tuple[RoleAssignment, bool]:
        row = await self.db.pool.fetchrow(
            "INSERT INTO role_assignments (id, principal_id, principal_type, role, scope, created_at, "
            "principal_issuer) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (id) DO UPDATE SET principal_id = EXCLUDED.principal_id, "
            "principal_type = EXCLUDED.principal_type, role = EXCLUDED.role, scope = EXCLUDED.scope, "
            "principal_issuer = EXCLUDED.principal_issuer "
            "RETURNING created_at, (xmax = 0) AS inserted",
            assignment.id, assignment.principal_id, assignment.principal_type, assignment.role,
            assignment.scope, utc_now(), assignment.principal_issuer)
        self.cache.clear()
        return replace(assignment, created_at=row["created_at"]), bool(row["inserted"])

    async def get(self, assignment_id: str) -> RoleAssignment | None:
        row = await self.db.pool.fetchrow("SELECT * FROM role_assignments WHERE id = $1", assignment_id)
        return assignment_from_row(row) if row else None

    async def delete(self, assignment_id: str) -> bool:
        status = await self.db.pool.execute("DELETE FROM role_assignments WHERE id = $1", assignment_id)
        self.cache.clear()
        return bool(status != "DELETE 0")

    async def list_all(self) -> list[RoleAssignment]:
        rows = await self.db.pool.fetch("SELECT * FROM role_assignments ORDER BY id")
        return [assignment_from_row(r) for r in rows]

    async def for_principals(self, issuer: str, principal_ids: Iterable[str]) -> list[RoleAssignment]:
        ids = sorted(set(principal_ids))
        if not ids or not issuer:
            return []
        rows = await self.db.pool.fetch(
            "SELECT * FROM role_assignments WHERE principal_issuer = $1 AND principal_id = ANY($2::text[])",
            issuer, ids)
        return [assignment_from_row(r) for r in rows]

    async def claim_unscoped(self, issuer: str) -> int:
        claimed = await claim_unscoped_postgresql(self.db.pool, issuer)
        self.cache.clear()
        return claimed

    async def count_unscoped(self) -> int:
        return await count_unscoped_postgresql(self.db.pool)
