"""Connectivity status derived from live sessions, persisted write-behind.

``connectivityStatus`` used to be a column written on connect and on
disconnect (in a ``finally`` a crash never runs): a relay killed while its
agent was away came back reporting ``Connected`` with no session. Now:

- **derived**: :class:`LiveStatusRegistry` answers ``get``/``list`` with
  ``Connected`` exactly when the session directory says a live session exists
  (``SessionDirectory.is_present``: this replica's sessions) or presence
  says one is live on another replica (``present_elsewhere``), ``Connecting``
  for a cluster never seen connected, ``Offline`` otherwise.
  ``lastConnectivityTime`` (last seen connected) and agent metadata come from
  the store, overlaid with writes not yet flushed.
- **write-behind**: a connect, a disconnect and a metadata report no longer
  commit to SQLite on the event loop. They are coalesced per cluster (so the
  backlog is bounded by the number of clusters) and flushed every
  ``limits.status_flush_seconds``, through a store of its own (``writer``:
  for SQLite a second connection to the same WAL file, with its own worker
  thread) in transactions of at most ``FLUSH_CHUNK`` clusters. Why: the main
  connection runs one statement at a time; a flush of thousands of rows on
  it (one transaction plus its fsync) queued every cluster lookup behind it:
  agent connects and the management API (seconds at 5,000 agents
  reconnecting, measured by ``bench.scale``).
- **reconciled at start-up**: :meth:`LiveStatusRegistry.start` marks every
  stored ``Connected`` row without a live session on any replica ``Offline`` (a crash leaves
  no such row behind for long; the derived view never shows one at all).

Losing the last flush interval in a crash costs at most that much of
``lastConnectivityTime`` and of the newest metadata report; the status itself
is never stale because it is never read from the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from relay.background import cancel_and_wait
from relay.presence import PresenceUnavailable
from relay.registry import (
    Cluster,
    ClusterRegistry,
    ConnectivityStatus,
    check_writable,
    metadata_columns,
    utc_now,
)

log = logging.getLogger("relay")

# Agent certificates remembered (cluster id -> PEM, ~1 KiB each): a connect
# reads its cluster's twice (to verify the assertion, and after the upgrade to
# see the key did not change meanwhile), and a reconnect storm reads every one.
MAX_CACHED_AGENT_CERTIFICATES = 10_000
# How long one is trusted without reading the store again. Changes made
# through this registry (management API) drop the entry at once; this bounds
# how long a change made elsewhere (another replica sharing the database, an
# operator's edit of the file) goes unseen by new connects.
AGENT_CERTIFICATE_TTL = 5.0

# Clusters written per transaction of a flush: each transaction holds
# SQLite's write lock (and a management write on the main connection waits
# for it) for a few milliseconds, not for the whole backlog.
FLUSH_CHUNK = 256


async def is_registered(registry: ClusterRegistry, cluster_id: str) -> bool:
    """Whether ``cluster_id`` is registered, without deriving its status: the
    router asks this for every stream, and a status from presence would cost
    a Redis round trip per forwarded stream."""
    store = registry.store if isinstance(registry, LiveStatusRegistry) else registry
    return await store.get(cluster_id) is not None


class LiveStatusRegistry:
    """A ``ClusterRegistry`` whose status comes from live sessions (module docstring).

    Args:
        store: the durable registry.
        is_present: whether a live agent session exists for a cluster id
            (``SessionDirectory.is_present``).
        flush_seconds: how long writes are coalesced before one flush (0:
            flush as soon as the event loop is free).
        writer: the store flushes go to (default ``store``): a registry on
            its own database connection, so that a flush never holds the
            connection the event loop reads through.
        present_elsewhere: which of some cluster ids have a live agent
            session on any replica (presence, ``live_clusters``); asked only
            for the ids without a local session. None: this replica only.
    """

    def __init__(self, store: ClusterRegistry, is_present: Callable[[str], bool],
                 flush_seconds: float = 1.0, writer: ClusterRegistry | None = None,
                 present_elsewhere: Callable[[Sequence[str]], Awaitable[set[str]]] | None = None) -> None:
        self.store = store
        self.writer = writer or store
        self.is_present = is_present
        self.present_elsewhere = present_elsewhere
        self.flush_seconds = flush_seconds
        self.flushes = 0
        # cluster id -> columns to write; one entry per cluster at most.
        self._pending: dict[str, dict[str, Any]] = {}
        self._dirty = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # cluster id -> (read at, monotonic; PEM), oldest first.
        self._certificates: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.clock: Callable[[], float] = time.monotonic

    # -- lifecycle ---------------------------------------------------------------
    async def reconcile(self) -> int:
        """Mark stored ``Connected`` rows without a live session ``Offline``;
        returns how many were changed. Run before serving."""
        stored = [c.id for c in await self.store.list() if c.connectivity_status == "Connected"]
        present = await self._present(stored)
        stale = [cid for cid in stored if cid not in present]
        if stale:
            await self.store.apply_updates({cid: {"connectivity_status": "Offline"} for cid in stale})
        log.info("status reconciled offline=%d", len(stale))
        return len(stale)

    async def start(self) -> None:
        """Reconcile, then start the write-behind flusher."""
        await self.reconcile()
        self._flusher = asyncio.ensure_future(self._flush_loop())

    async def stop(self) -> None:
        """Stop the flusher and write what is pending."""
        await cancel_and_wait(self._flusher)
        self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Write every pending update now (``FLUSH_CHUNK`` clusters per
        transaction, through ``writer``)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        items = list(batch.items())
        for start in range(0, len(items), FLUSH_CHUNK):
            chunk = dict(items[start:start + FLUSH_CHUNK])
            try:
                await self.writer.apply_updates(chunk)
            except asyncio.CancelledError:
                # The store may still write this chunk; the rest waits for stop()'s flush.
                self._requeue(items[start + FLUSH_CHUNK:])
                raise
            except Exception as exc:  # any store failure (sqlite3, asyncpg, OSError): retried next flush
                self._requeue(items[start:])
                log.warning("status flush failed clusters=%d error=%s", len(items) - start,
                            type(exc).__name__)
                return
        self.flushes += 1

    def _requeue(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Keep unwritten updates for the next flush, under anything newer."""
        for cid, columns in items:
            self._pending[cid] = {**columns, **self._pending.get(cid, {})}
        if items:
            self._dirty.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    def _queue(self, cluster_id: str, columns: dict[str, Any]) -> None:
        self._pending.setdefault(cluster_id, {}).update(columns)
        self._dirty.set()

    # -- ClusterRegistry ---------------------------------------------------------
    async def _present(self, cluster_ids: Sequence[str]) -> set[str]:
        """Which of ``cluster_ids`` have a live agent session here or, by
        presence, on another replica (this one's only, when presence does not answer)."""
        present = {cid for cid in cluster_ids if self.is_present(cid)}
        rest = [cid for cid in cluster_ids if cid not in present]
        if rest and self.present_elsewhere is not None:
            try:
                present |= await self.present_elsewhere(rest)
            except PresenceUnavailable as exc:
                log.warning("status from this replica only: %s", exc)
        return present

    def _view(self, cluster: Cluster, present: bool) -> Cluster:
        pending = self._pending.get(cluster.id)
        if pending:
            cluster = replace(cluster, **pending)
        if present:
            status: ConnectivityStatus = "Connected"
        elif cluster.connectivity_status == "Connecting" and cluster.last_connectivity_time is None:
            status = "Connecting"
        else:
            status = "Offline"
        return replace(cluster, connectivity_status=status)

    async def get(self, cluster_id: str) -> Cluster | None:
        cluster = await self.store.get(cluster_id)
        if cluster is None:
            return None
        return self._view(cluster, cluster_id in await self._present([cluster_id]))

    async def agent_certificate(self, cluster_id: str) -> str | None:
        """The registered agent certificate, from a bounded cache of at most
        ``AGENT_CERTIFICATE_TTL`` seconds' age (``put``/``delete`` drop the
        entry). An unknown cluster is never cached: it costs a lookup each
        time, and cannot fill the cache."""
        now = self.clock()
        cached = self._certificates.get(cluster_id)
        if cached is not None and now - cached[0] < AGENT_CERTIFICATE_TTL:
            return cached[1]
        certificate = await self.store.agent_certificate(cluster_id)
        if certificate is None:
            self._certificates.pop(cluster_id, None)
            return None
        self._certificates[cluster_id] = (now, certificate)
        self._certificates.move_to_end(cluster_id)
        if len(self._certificates) > MAX_CACHED_AGENT_CERTIFICATES:
            self._certificates.popitem(last=False)
        return certificate

    async def list(self, resource_group: str | None = None) -> list[Cluster]:
        clusters = await self.store.list(resource_group)
        present = await self._present([c.id for c in clusters])
        return [self._view(c, c.id in present) for c in clusters]

    async def ids(self) -> tuple[str, ...]:
        return await self.store.ids()

    async def put(self, cluster: Cluster) -> tuple[Cluster, bool]:
        stored, created = await self.store.put(cluster)
        self._certificates.pop(cluster.id, None)
        return self._view(stored, stored.id in await self._present([stored.id])), created

    async def delete(self, cluster_id: str) -> bool:
        self._pending.pop(cluster_id, None)
        self._certificates.pop(cluster_id, None)
        return await self.store.delete(cluster_id)

    async def set_connectivity(self, cluster_id: str, status: ConnectivityStatus) -> None:
        """Record a connect or disconnect (write-behind); the status reported
        comes from the directory, the stored one only feeds reconciliation."""
        self._queue(cluster_id, {"connectivity_status": status, "last_connectivity_time": utc_now()})

    async def set_metadata(self, cluster_id: str, metadata: dict[str, Any]) -> None:
        # A report is proof of connectivity: lastConnectivityTime means "last
        # seen connected" (as in Azure Arc), not "last status change".
        self._queue(cluster_id, {**metadata_columns(metadata), "last_connectivity_time": utc_now()})

    async def apply_updates(self, batch: dict[str, dict[str, Any]]) -> None:
        """Queue status/metadata columns (write-behind, like set_connectivity)."""
        check_writable(batch)
        for cid, columns in batch.items():
            self._queue(cid, columns)

    async def ping(self) -> bool:
        return await self.store.ping()
