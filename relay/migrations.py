"""Versioned schema migrations of the relay's database, in one place.

Each :class:`Migration` is numbered and carries its SQL per dialect (the text
is shared where SQLite and PostgreSQL agree). A ``schema_version`` table holds
one row per applied migration. Start-up applies the missing ones inside one
transaction that first takes a database-wide lock, so several replicas
starting at once apply each migration exactly once:

- SQLite: ``BEGIN IMMEDIATE`` (the write lock, taken before reading the version);
- PostgreSQL: ``pg_advisory_xact_lock`` around the check-and-apply.

A SQLite file made before versioning (tables but no ``schema_version``) is
adopted as version 1: its tables are exactly migration 1's.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

# Arbitrary, fixed: the advisory lock key every replica takes to migrate.
ADVISORY_LOCK_KEY = 0x6172_635F_7265_6C61  # "arc_rela"


@dataclass(frozen=True)
class Migration:
    """One schema change: ``sqlite`` and ``postgresql`` are its statements
    (``postgresql`` None: the same text as ``sqlite``)."""

    version: int
    description: str
    sqlite: str
    postgresql: str | None = None

    def sql(self, dialect: str) -> str:
        return self.sqlite if dialect == "sqlite" or self.postgresql is None else self.postgresql


_V1 = """
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    location TEXT NOT NULL DEFAULT '',
    agent_public_key_certificate TEXT NOT NULL,
    serving_ca_certificate TEXT NOT NULL DEFAULT '',
    tls_server_name TEXT NOT NULL DEFAULT '',
    connectivity_status TEXT NOT NULL DEFAULT 'Connecting',
    last_connectivity_time TEXT,
    agent_version TEXT,
    kubernetes_version TEXT,
    total_node_count INTEGER,
    total_core_count INTEGER,
    provisioning_state TEXT NOT NULL DEFAULT 'Succeeded',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS role_assignments (
    id TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS role_assignments_principal ON role_assignments (principal_id);
"""

# A principal belongs to its issuer (docs/identity-providers.md): the assignee's
# exact ``iss``. Rows made before it get "" (matching nobody) until the relay,
# started with exactly one trusted issuer, claims them for it
# (claim_unscoped_*): the issuer they were made for.
_V2 = """
ALTER TABLE role_assignments ADD COLUMN principal_issuer TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS role_assignments_issuer_principal
    ON role_assignments (principal_issuer, principal_id)
"""

# Clusters that enabled central Kubernetes roles (relay/central_rbac_store.py);
# a table of its own so a cluster's registration is untouched by the mode.
_V3 = """
CREATE TABLE IF NOT EXISTS central_rbac_clusters (
    cluster_id TEXT PRIMARY KEY,
    enabled_at TEXT NOT NULL
);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "clusters and role assignments", _V1),
    Migration(2, "role assignments name their assignee's issuer", _V2),
    Migration(3, "clusters with central Kubernetes roles", _V3),
)

_CLAIM_UNSCOPED = "UPDATE role_assignments SET principal_issuer = {mark} WHERE principal_issuer = ''"
_COUNT_UNSCOPED = "SELECT count(*) FROM role_assignments WHERE principal_issuer = ''"


def claim_unscoped_sqlite(cur: sqlite3.Cursor, issuer: str) -> int:
    """Give role assignments that name no issuer to ``issuer`` (inside the
    caller's transaction); returns how many."""
    cur.execute(_CLAIM_UNSCOPED.format(mark="?"), (issuer,))
    return cur.rowcount


def count_unscoped_sqlite(cur: sqlite3.Cursor) -> int:
    """Role assignments that name no issuer."""
    return int(cur.execute(_COUNT_UNSCOPED).fetchone()[0])


async def claim_unscoped_postgresql(conn: asyncpg.Pool | asyncpg.Connection, issuer: str) -> int:
    """Give role assignments that name no issuer to ``issuer``; returns how many."""
    status = await conn.execute(_CLAIM_UNSCOPED.format(mark="$1"), issuer)
    return int(str(status).rsplit(" ", 1)[-1])


async def count_unscoped_postgresql(conn: asyncpg.Pool | asyncpg.Connection) -> int:
    """Role assignments that name no issuer."""
    return int(await conn.fetchval(_COUNT_UNSCOPED))

_VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version "
                  "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)")


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


@contextmanager
def sqlite_transaction(conn: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[sqlite3.Cursor]:
    """A cursor inside ``begin``/COMMIT (ROLLBACK on any error) on an
    autocommit connection."""
    cur = conn.cursor()
    try:
        # Outside the ROLLBACK's reach: a BEGIN that fails (e.g. "database is
        # locked") opened no transaction, and its own error is the one to see.
        cur.execute(begin)
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
    finally:
        cur.close()


def migrate_sqlite(conn: sqlite3.Connection) -> list[int]:
    """Apply the missing migrations to an autocommit connection; returns the
    versions applied now."""
    # The write lock first (IMMEDIATE): one migrator at a time.
    with sqlite_transaction(conn, "BEGIN IMMEDIATE") as cur:
        had_versions = cur.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        cur.execute(_VERSION_TABLE)
        applied = {row[0] for row in cur.execute("SELECT version FROM schema_version")}
        if not had_versions and cur.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'clusters'").fetchone():
            # Made before versioning: its tables are migration 1's.
            cur.execute("INSERT INTO schema_version VALUES (1, ?, ?)",
                        ("adopted: " + MIGRATIONS[0].description, _now()))
            applied.add(1)
        done = []
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            for statement in _split(migration.sql("sqlite")):
                cur.execute(statement)
            cur.execute("INSERT INTO schema_version VALUES (?, ?, ?)",
                        (migration.version, migration.description, _now()))
            done.append(migration.version)
    return done


async def migrate_postgresql(conn: asyncpg.Connection) -> list[int]:
    """Apply the missing migrations; returns the versions applied now."""
    done = []
    async with conn.transaction():
        # Held to the end of this transaction: concurrent replicas wait here,
        # then see the versions the first one applied.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(_VERSION_TABLE)
        applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_version")}
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            await conn.execute(migration.sql("postgresql"))
            await conn.execute("INSERT INTO schema_version VALUES ($1, $2, $3)",
                               migration.version, migration.description, _now())
            done.append(migration.version)
    return done
