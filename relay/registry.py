"""The cluster registry: what clusters exist and what the relay knows of them.

``ClusterRegistry`` is the small async interface the rest of the relay uses;
the embedded default is ``SqliteRegistry`` (one file). A shared database for
several replicas implements the same interface. Role assignments live in the
same SQLite file (see ``relay.roles``) so one file is the whole state.

SQLite statements run on ONE worker thread owned by :class:`SqliteDatabase`
(sqlite3 connections are not thread-safe, and one writer serialises commits):
no commit, and its fsync, runs on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

from relay import names
from relay.migrations import migrate_sqlite, sqlite_transaction

ConnectivityStatus = Literal["Connecting", "Connected", "Offline"]

# Names are checked by relay.names (fullmatch, closed alphabet).
NAME_RE = names.NAME_RE



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


# Spelled once here: inside classes with a ``list`` method, ``list[...]`` names the method.
ClusterList = list[Cluster]


class ClusterRegistry(Protocol):
    """What the relay needs from a cluster store. Every call is a coroutine:
    implementations do their I/O off the event loop (a worker thread for
    SQLite, the network for PostgreSQL)."""

    async def get(self, cluster_id: str) -> Cluster | None: ...

    async def agent_certificate(self, cluster_id: str) -> str | None:
        """The cluster's registered ``agentPublicKeyCertificate`` (None: no
        such cluster): all an agent connect needs, without the whole row."""
        ...

    async def list(self, resource_group: str | None = None) -> list[Cluster]: ...

    async def ids(self) -> tuple[str, ...]:
        """Every registered cluster id, sorted (cheap: no rows built; metrics)."""
        ...

    async def put(self, cluster: Cluster) -> tuple[Cluster, bool]:
        """Create or update the registration part; returns (stored, created)."""
        ...

    async def delete(self, cluster_id: str) -> bool: ...

    async def set_connectivity(self, cluster_id: str, status: ConnectivityStatus) -> None: ...

    async def set_metadata(self, cluster_id: str, metadata: dict[str, Any]) -> None: ...

    async def apply_updates(self, batch: dict[str, dict[str, Any]]) -> None:
        """Write many clusters' status/metadata columns in one transaction."""
        ...

    async def ping(self) -> bool:
        """True when the store answers (``/readyz``)."""
        ...


COLUMNS = (
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


_P = ParamSpec("_P")
_T = TypeVar("_T")


class SqliteDatabase:
    """One SQLite file shared by the registry and the role store.

    One connection, used only from one worker thread (a single-thread
    executor owned by this object): sqlite3 connections are not thread-safe,
    one writer serialises commits anyway, and a single connection keeps
    ``:memory:`` databases usable in tests. Coroutines hand their statements
    to that thread with :meth:`run`; ``transaction``/``reading`` are for the
    functions running there.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            self._conn = self._executor.submit(self._open).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            # WAL: readers (e.g. the status writer's connection) never wait
            # behind a writer. Set outside a transaction, as SQLite requires;
            # executescript commits by itself.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")  # another migrator/writer holds the lock: wait
            migrate_sqlite(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` on this database's worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A cursor inside BEGIN/COMMIT (ROLLBACK on error); worker thread only."""
        with sqlite_transaction(self._conn) as cur:
            yield cur

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Cursor]:
        """A cursor for one read-only statement (autocommit); worker thread only."""
        cur = self._conn.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def close(self) -> None:
        """Close the connection (on its thread) and stop the thread; idempotent."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None  # type: ignore[assignment]
        executor.submit(self._conn.close).result()
        executor.shutdown(wait=True)


class SqliteRegistry:
    """``ClusterRegistry`` over a :class:`SqliteDatabase` (each call one job on
    its worker thread)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    @staticmethod
    def _row(row: sqlite3.Row) -> Cluster:
        return Cluster(**{c: row[c] for c in COLUMNS})

    async def get(self, cluster_id: str) -> Cluster | None:
        return await self.db.run(self._get, cluster_id)

    def _get(self, cluster_id: str) -> Cluster | None:
        # A single SELECT: autocommit, no BEGIN/COMMIT pair.
        with self.db.reading() as cur:
            row = cur.execute("SELECT * FROM clusters WHERE id = ?", (cluster_id,)).fetchone()
        return self._row(row) if row else None

    async def agent_certificate(self, cluster_id: str) -> str | None:
        return await self.db.run(self._agent_certificate, cluster_id)

    def _agent_certificate(self, cluster_id: str) -> str | None:
        with self.db.reading() as cur:
            row = cur.execute("SELECT agent_public_key_certificate FROM clusters WHERE id = ?",
                              (cluster_id,)).fetchone()
        return str(row[0]) if row else None

    async def list(self, resource_group: str | None = None) -> list[Cluster]:
        return await self.db.run(self._list, resource_group)

    def _list(self, resource_group: str | None) -> ClusterList:
        with self.db.reading() as cur:
            if resource_group is None:
                rows = cur.execute("SELECT * FROM clusters ORDER BY id").fetchall()
            else:
                rows = cur.execute(
                    "SELECT * FROM clusters WHERE resource_group = ? ORDER BY id", (resource_group,)
                ).fetchall()
        return [self._row(r) for r in rows]

    async def ids(self) -> tuple[str, ...]:
        return await self.db.run(self._ids)

    def _ids(self) -> tuple[str, ...]:
        with self.db.reading() as cur:
            return tuple(row[0] for row in cur.execute("SELECT id FROM clusters ORDER BY id"))

    async def put(self, cluster: Cluster) -> tuple[Cluster, bool]:
        return await self.db.run(self._put, cluster)

    def _put(self, cluster: Cluster) -> tuple[Cluster, bool]:
        with self.db.transaction() as cur:
            old = cur.execute("SELECT * FROM clusters WHERE id = ?", (cluster.id,)).fetchone()
            if old is None:
                stored = replace(cluster, created_at=cluster.created_at or utc_now())
                values = asdict(stored)
                cur.execute(
                    f"INSERT INTO clusters (id, {', '.join(COLUMNS)}) "
                    f"VALUES (?, {', '.join('?' for _ in COLUMNS)})",
                    (stored.id, *(values[c] for c in COLUMNS)),
                )
                return stored, True
            # An update changes only what the caller registers; status and
            # agent-reported metadata stay what the relay observed.
            stored = registration_update(self._row(old), cluster)
            cur.execute(
                "UPDATE clusters SET location = ?, agent_public_key_certificate = ?, "
                "serving_ca_certificate = ?, tls_server_name = ? WHERE id = ?",
                (stored.location, stored.agent_public_key_certificate,
                 stored.serving_ca_certificate, stored.tls_server_name, stored.id),
            )
            return stored, False

    async def delete(self, cluster_id: str) -> bool:
        return await self.db.run(self._delete, cluster_id)

    def _delete(self, cluster_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM clusters WHERE id = ?", (cluster_id,))
            return cur.rowcount > 0

    async def set_connectivity(self, cluster_id: str, status: ConnectivityStatus) -> None:
        await self.apply_updates({cluster_id: {"connectivity_status": status,
                                               "last_connectivity_time": utc_now()}})

    async def apply_updates(self, batch: dict[str, dict[str, Any]]) -> None:
        """Write many clusters' status/metadata columns in one transaction
        (the write-behind flush of ``relay.status``).

        Args:
            batch: cluster id -> {column: value}; columns must be status or
                metadata columns (``_WRITABLE``), anything else is a bug.
        """
        check_writable(batch)
        await self.db.run(self._apply_updates, batch)

    def _apply_updates(self, batch: dict[str, dict[str, Any]]) -> None:
        with self.db.transaction() as cur:
            for cid, columns in batch.items():
                if not columns:
                    continue
                assignments = ", ".join(f"{c} = ?" for c in columns)
                cur.execute(f"UPDATE clusters SET {assignments} WHERE id = ?", (*columns.values(), cid))

    async def set_metadata(self, cluster_id: str, metadata: dict[str, Any]) -> None:
        # A report is proof of connectivity: lastConnectivityTime means "last
        # seen connected" (as in Azure Arc), not "last status change".
        await self.apply_updates({cluster_id: {**metadata_columns(metadata),
                                               "last_connectivity_time": utc_now()}})

    async def ping(self) -> bool:
        try:
            return await self.db.run(self._ping)
        except sqlite3.Error:
            return False

    def _ping(self) -> bool:
        with self.db.reading() as cur:
            cur.execute("SELECT 1").fetchone()
        return True


def check_writable(batch: dict[str, dict[str, Any]]) -> None:
    """Raise ValueError when ``batch`` names a column the write-behind may not set."""
    for columns in batch.values():
        unknown = set(columns) - _WRITABLE
        if unknown:
            raise ValueError(f"not a status/metadata column: {sorted(unknown)}")


def registration_update(old: Cluster, new: Cluster) -> Cluster:
    """``old`` with the registration fields of ``new`` (status, metadata and
    creation time stay what the relay observed)."""
    return replace(
        old,
        location=new.location,
        agent_public_key_certificate=new.agent_public_key_certificate,
        serving_ca_certificate=new.serving_ca_certificate,
        tls_server_name=new.tls_server_name,
    )
