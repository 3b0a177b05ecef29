"""The cluster registry: what clusters exist and what the relay knows of them.

``ClusterRegistry`` is the small interface the rest of the relay uses; the
embedded default is ``SqliteRegistry`` (one file). A shared database for several
replicas will implement the same interface. Role assignments live in the same
SQLite file (see ``relay.roles``) so one file is the whole state.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from relay import names

ConnectivityStatus = Literal["Connecting", "Connected", "Offline"]

# Names are checked by relay.names (fullmatch, closed alphabet).
NAME_RE = names.NAME_RE

_SCHEMA = """
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


# (epoch second, its RFC 3339 text): every connect and disconnect stamps the
# time, thousands per second in a reconnect storm, within the same second.
_last_stamp: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """Now as an RFC 3339 UTC timestamp with second precision (``...Z``)."""
    global _last_stamp
    second = int(time.time())
    if _last_stamp[0] != second:
        text = dt.datetime.fromtimestamp(second, dt.UTC).isoformat().replace("+00:00", "Z")
        _last_stamp = (second, text)
    return _last_stamp[1]


def cluster_id(resource_group: str, name: str) -> str:
    """The id of a cluster: ``<resourceGroup>/<name>`` (also the stream target)."""
    return f"{resource_group}/{name}"


def valid_name(value: str) -> bool:
    """Whether ``value`` is acceptable as a resource group or cluster name."""
    return names.valid_name(value)


@dataclass(frozen=True)
class Cluster:
    """One registered cluster. Field names are snake_case here and camelCase
    on the wire (:meth:`to_json`)."""

    name: str
    resource_group: str
    agent_public_key_certificate: str
    location: str = ""
    serving_ca_certificate: str = ""
    tls_server_name: str = ""
    connectivity_status: ConnectivityStatus = "Connecting"
    last_connectivity_time: str | None = None
    agent_version: str | None = None
    kubernetes_version: str | None = None
    total_node_count: int | None = None
    total_core_count: int | None = None
    provisioning_state: str = "Succeeded"
    created_at: str = ""

    @property
    def id(self) -> str:
        return cluster_id(self.resource_group, self.name)

    def to_json(self) -> dict[str, Any]:
        """The REST representation (camelCase keys, as ``arcctl show`` prints)."""
        return {
            "id": self.id,
            "name": self.name,
            "resourceGroup": self.resource_group,
            "location": self.location,
            "agentPublicKeyCertificate": self.agent_public_key_certificate,
            "servingCaCertificate": self.serving_ca_certificate,
            "tlsServerName": self.tls_server_name,
            "connectivityStatus": self.connectivity_status,
            "lastConnectivityTime": self.last_connectivity_time,
            "agentVersion": self.agent_version,
            "kubernetesVersion": self.kubernetes_version,
            "totalNodeCount": self.total_node_count,
            "totalCoreCount": self.total_core_count,
            "provisioningState": self.provisioning_state,
            "createdAt": self.created_at,
        }


class ClusterRegistry(Protocol):
    """What the relay needs from a cluster store. Implementations must be safe
    to call from the event loop (calls are short; SQLite is local)."""

    def get(self, cluster_id: str) -> Cluster | None: ...

    def agent_certificate(self, cluster_id: str) -> str | None:
        """The cluster's registered ``agentPublicKeyCertificate`` (None: no
        such cluster): all an agent connect needs, without the whole row."""
        ...

    def list(self, resource_group: str | None = None) -> list[Cluster]: ...

    def ids(self) -> tuple[str, ...]:
        """Every registered cluster id, sorted (cheap: no rows built; metrics)."""
        ...

    def put(self, cluster: Cluster) -> tuple[Cluster, bool]:
        """Create or update the registration part; returns (stored, created)."""
        ...

    def delete(self, cluster_id: str) -> bool: ...

    def set_connectivity(self, cluster_id: str, status: ConnectivityStatus) -> None: ...

    def set_metadata(self, cluster_id: str, metadata: dict[str, Any]) -> None: ...

    def ping(self) -> bool:
        """True when the store answers (``/readyz``)."""
        ...


_COLUMNS = (
    "name", "resource_group", "location", "agent_public_key_certificate",
    "serving_ca_certificate", "tls_server_name", "connectivity_status",
    "last_connectivity_time", "agent_version", "kubernetes_version",
    "total_node_count", "total_core_count", "provisioning_state", "created_at",
)
# Metadata an agent may report, wire name -> column; anything else is ignored.
METADATA_FIELDS = {
    "agentVersion": ("agent_version", str),
    "kubernetesVersion": ("kubernetes_version", str),
    "totalNodeCount": ("total_node_count", int),
    "totalCoreCount": ("total_core_count", int),
}


def metadata_columns(metadata: dict[str, Any]) -> dict[str, Any]:
    """The columns an agent's metadata report sets (unknown or bad keys dropped)."""
    updates: dict[str, Any] = {}
    for key, (column, kind) in METADATA_FIELDS.items():
        value = metadata.get(key)
        if value is None:
            continue
        try:
            updates[column] = kind(value) if kind is int else str(value)[:100]
        except (TypeError, ValueError):
            continue
    return updates


# Columns the write-behind may set (never the registration itself).
_WRITABLE = frozenset({"connectivity_status", "last_connectivity_time",
                       *(column for column, _ in METADATA_FIELDS.values())})


class SqliteDatabase:
    """One SQLite file shared by the registry and the role store.

    One connection guarded by a lock: calls are tiny and come from one event
    loop, and a single connection keeps ``:memory:`` databases usable in tests.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        # WAL: readers (e.g. /readyz) never wait behind a writer. Set outside
        # a transaction, as SQLite requires; executescript commits by itself.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A cursor inside BEGIN/COMMIT (ROLLBACK on error)."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN")
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Cursor]:
        """A cursor for one read-only statement (autocommit; no transaction)."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield cur
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteRegistry:
    """``ClusterRegistry`` over a :class:`SqliteDatabase`."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    @staticmethod
    def _row(row: sqlite3.Row) -> Cluster:
        return Cluster(**{c: row[c] for c in _COLUMNS})

    def get(self, cluster_id: str) -> Cluster | None:
        # A single SELECT: autocommit, no BEGIN/COMMIT pair on the connect path.
        with self.db.reading() as cur:
            row = cur.execute("SELECT * FROM clusters WHERE id = ?", (cluster_id,)).fetchone()
        return self._row(row) if row else None

    def agent_certificate(self, cluster_id: str) -> str | None:
        with self.db.reading() as cur:
            row = cur.execute("SELECT agent_public_key_certificate FROM clusters WHERE id = ?",
                              (cluster_id,)).fetchone()
        return str(row[0]) if row else None

    def list(self, resource_group: str | None = None) -> list[Cluster]:
        with self.db.transaction() as cur:
            if resource_group is None:
                rows = cur.execute("SELECT * FROM clusters ORDER BY id").fetchall()
            else:
                rows = cur.execute(
                    "SELECT * FROM clusters WHERE resource_group = ? ORDER BY id", (resource_group,)
                ).fetchall()
        return [self._row(r) for r in rows]

    def ids(self) -> tuple[str, ...]:
        with self.db.reading() as cur:
            return tuple(row[0] for row in cur.execute("SELECT id FROM clusters ORDER BY id"))

    def put(self, cluster: Cluster) -> tuple[Cluster, bool]:
        with self.db.transaction() as cur:
            old = cur.execute("SELECT * FROM clusters WHERE id = ?", (cluster.id,)).fetchone()
            if old is None:
                stored = replace(cluster, created_at=cluster.created_at or utc_now())
                values = asdict(stored)
                cur.execute(
                    f"INSERT INTO clusters (id, {', '.join(_COLUMNS)}) "
                    f"VALUES (?, {', '.join('?' for _ in _COLUMNS)})",
                    (stored.id, *(values[c] for c in _COLUMNS)),
                )
                return stored, True
            # An update changes only what the caller registers; status and
            # agent-reported metadata stay what the relay observed.
            stored = replace(
                self._row(old),
                location=cluster.location,
                agent_public_key_certificate=cluster.agent_public_key_certificate,
                serving_ca_certificate=cluster.serving_ca_certificate,
                tls_server_name=cluster.tls_server_name,
            )
            cur.execute(
                "UPDATE clusters SET location = ?, agent_public_key_certificate = ?, "
                "serving_ca_certificate = ?, tls_server_name = ? WHERE id = ?",
                (stored.location, stored.agent_public_key_certificate,
                 stored.serving_ca_certificate, stored.tls_server_name, stored.id),
            )
            return stored, False

    def delete(self, cluster_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM clusters WHERE id = ?", (cluster_id,))
            return cur.rowcount > 0

    def set_connectivity(self, cluster_id: str, status: ConnectivityStatus) -> None:
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE clusters SET connectivity_status = ?, last_connectivity_time = ? WHERE id = ?",
                (status, utc_now(), cluster_id),
            )

    def apply_updates(self, batch: dict[str, dict[str, Any]]) -> None:
        """Write many clusters' status/metadata columns in one transaction
        (the write-behind flush of ``relay.status``; safe from a worker thread).

        Args:
            batch: cluster id -> {column: value}; columns must be status or
                metadata columns (``_WRITABLE``), anything else is a bug.
        """
        with self.db.transaction() as cur:
            for cid, columns in batch.items():
                unknown = set(columns) - _WRITABLE
                if unknown:
                    raise ValueError(f"not a status/metadata column: {sorted(unknown)}")
                if not columns:
                    continue
                assignments = ", ".join(f"{c} = ?" for c in columns)
                cur.execute(f"UPDATE clusters SET {assignments} WHERE id = ?", (*columns.values(), cid))

    def set_metadata(self, cluster_id: str, metadata: dict[str, Any]) -> None:
        updates = metadata_columns(metadata)
        # A report is proof of connectivity: lastConnectivityTime means "last
        # seen connected" (as in Azure Arc), not "last status change".
        updates["last_connectivity_time"] = utc_now()
        assignments = ", ".join(f"{c} = ?" for c in updates)
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE clusters SET {assignments} WHERE id = ?", (*updates.values(), cluster_id)
            )

    def ping(self) -> bool:
        try:
            with self.db.transaction() as cur:
                cur.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False
