"""Versioned migrations on SQLite: a fresh file, a file made before
versioning (adopted as version 1), and concurrent migrators."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from relay import SqliteDatabase, SqliteRegistry, SqliteRoleStore
from relay.migrations import MIGRATIONS, migrate_sqlite

# The schema the relay wrote before migrations existed (relay/registry.py's
# _SCHEMA until this change), with one row in each table.
PRE_VERSIONING_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, resource_group TEXT NOT NULL,
    location TEXT NOT NULL DEFAULT '', agent_public_key_certificate TEXT NOT NULL,
    serving_ca_certificate TEXT NOT NULL DEFAULT '', tls_server_name TEXT NOT NULL DEFAULT '',
    connectivity_status TEXT NOT NULL DEFAULT 'Connecting', last_connectivity_time TEXT,
    agent_version TEXT, kubernetes_version TEXT, total_node_count INTEGER, total_core_count INTEGER,
    provisioning_state TEXT NOT NULL DEFAULT 'Succeeded', created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS role_assignments (
    id TEXT PRIMARY KEY, principal_id TEXT NOT NULL, principal_type TEXT NOT NULL,
    role TEXT NOT NULL, scope TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS role_assignments_principal ON role_assignments (principal_id);
INSERT INTO clusters (id, name, resource_group, agent_public_key_certificate, created_at)
    VALUES ('rg1/old', 'old', 'rg1', 'PEM', '2026-01-01T00:00:00Z');
INSERT INTO role_assignments VALUES ('old', 'user-1', 'User', 'viewer', '/', '2026-01-01T00:00:00Z');
"""


def _versions(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT version, description FROM schema_version ORDER BY 1")]
    finally:
        conn.close()


async def test_sqlite_fresh_file_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    SqliteDatabase(path).close()
    assert [v for v, _ in _versions(path)] == [m.version for m in MIGRATIONS]
    SqliteDatabase(path).close()  # a second start applies nothing twice
    assert [v for v, _ in _versions(path)] == [m.version for m in MIGRATIONS]


async def test_sqlite_file_made_before_versioning_is_adopted_as_version_1(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path)
    conn.executescript(PRE_VERSIONING_SCHEMA)
    conn.close()
    db = SqliteDatabase(path)
    try:
        cluster = await SqliteRegistry(db).get("rg1/old")
        assert cluster is not None and cluster.agent_public_key_certificate == "PEM"
        # Migration 2: the old assignment names no issuer yet (the relay claims it at start-up).
        old = await SqliteRoleStore(db).get("old")
        assert old is not None and old.principal_issuer == "" and old.role == "viewer"
    finally:
        db.close()
    versions = _versions(path)
    assert versions[0][0] == 1 and versions[0][1].startswith("adopted")
    assert [v for v, _ in versions] == [m.version for m in MIGRATIONS]


def test_sqlite_concurrent_migrators_apply_each_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    start = threading.Barrier(6)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def migrator() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=20)
        try:
            start.wait()
            applied.append(migrate_sqlite(conn))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=migrator) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v for run in applied for v in run) == [m.version for m in MIGRATIONS]
    assert [v for v, _ in _versions(path)] == [m.version for m in MIGRATIONS]
