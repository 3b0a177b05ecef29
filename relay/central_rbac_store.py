"""Which clusters enabled central Kubernetes roles (issue 18), in the relay's
database (table ``central_rbac_clusters``, migration 2): SQLite for one node,
PostgreSQL for replicas. A cluster not listed ignores central roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from relay.registry import SqliteDatabase, utc_now

if TYPE_CHECKING:
    from relay.postgres_store import PostgresDatabase


class CentralRbacStore(Protocol):
    """The per-cluster switch; every call a coroutine."""

    async def set_enabled(self, cluster_id: str, enabled: bool) -> bool:
        """Switch the mode for ``cluster_id``; returns whether anything changed."""
        ...

    async def enabled_clusters(self) -> frozenset[str]:
        """Ids (``<rg>/<name>``) of every cluster with the mode on."""
        ...


class SqliteCentralRbacStore:
    """The switch in the relay's SQLite file."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def set_enabled(self, cluster_id: str, enabled: bool) -> bool:
        return await self.db.run(self._set, cluster_id, enabled)

    def _set(self, cluster_id: str, enabled: bool) -> bool:
        with self.db.transaction() as cur:
            if enabled:
                cur.execute("INSERT OR IGNORE INTO central_rbac_clusters (cluster_id, enabled_at) VALUES (?, ?)",
                            (cluster_id, utc_now()))
            else:
                cur.execute("DELETE FROM central_rbac_clusters WHERE cluster_id = ?", (cluster_id,))
            return cur.rowcount > 0

    async def enabled_clusters(self) -> frozenset[str]:
        return await self.db.run(self._enabled)

    def _enabled(self) -> frozenset[str]:
        with self.db.reading() as cur:
            return frozenset(r[0] for r in cur.execute("SELECT cluster_id FROM central_rbac_clusters"))


class PostgresCentralRbacStore:
    """The switch in the replicas' shared PostgreSQL database."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def set_enabled(self, cluster_id: str, enabled: bool) -> bool:
        async with self.db.pool.acquire() as conn:
            if enabled:
                status = await conn.execute(
                    "INSERT INTO central_rbac_clusters (cluster_id, enabled_at) VALUES ($1, $2) "
                    "ON CONFLICT (cluster_id) DO NOTHING", cluster_id, utc_now())
            else:
                status = await conn.execute("DELETE FROM central_rbac_clusters WHERE cluster_id = $1",
                                            cluster_id)
        # asyncpg returns the command tag: "INSERT 0 1", "DELETE 0".
        return str(status).rsplit(" ", 1)[-1] != "0"

    async def enabled_clusters(self) -> frozenset[str]:
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch("SELECT cluster_id FROM central_rbac_clusters")
        return frozenset(str(r["cluster_id"]) for r in rows)
