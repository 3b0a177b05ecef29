"""Presence: which replica holds which cluster's agent session.

Theory of operation. Each agent session a replica accepts gets a **session
id** from :class:`SessionIds` (a fencing token: strictly increasing within a
process, and a restarted process starts above every id its predecessor
issued). The replica registers ``(cluster id, session id)`` when the session
becomes the cluster's live one and unregisters it when it ends. A
:class:`Route` (replica id, the address other replicas reach it at, session
id, expiry) is what ``lookup`` returns for a cluster: one per replica holding
a session of it, newest session first.

Two implementations satisfy :class:`Presence`:

- :class:`MemoryPresence` (this module): the single-replica default. The
  routes are this process's own sessions; nothing expires while it lives.
- ``RedisPresence`` (relay/presence_redis.py): soft state in Redis with an
  expiry, refreshed while the session lives, fenced by the session id and
  re-asserted from memory after a Redis restart.

``register`` and ``unregister`` never wait for a store: they record the
change in memory and return, so an unreachable store never holds an agent's
session set-up; the store is brought up to date in the background.
:class:`PresenceDirectory` wraps the relay's local session directory so that
every directory change is mirrored into presence with its session id.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from relay.directory import LocalDirectory

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MemoryPresence",
    "Presence",
    "PresenceConfig",
    "PresenceDirectory",
    "PresenceUnavailable",
    "Route",
    "SessionIds",
]

S = TypeVar("S")

# A crashed replica's routes disappear within this (seconds): long enough that
# a Redis hiccup of a few seconds never drops a live route (it is refreshed
# every third of it), short enough that a client is not sent to a dead replica
# for long.
DEFAULT_TTL_SECONDS = 15.0


class PresenceUnavailable(Exception):
    """The presence store did not answer a lookup (unreachable, timed out)."""


@dataclass(frozen=True, order=True)
class Route:
    """Where one agent session of a cluster lives.

    Attributes:
        session_id: the session's fencing id (newer sessions have larger ids).
        replica_id: the replica holding the session.
        address: ``host:port`` other replicas reach that replica at.
        expires_at: Unix time (seconds, by the store's clock) the route
            lapses unless refreshed; ``math.inf`` for a route held in this process.
    """

    session_id: int
    replica_id: str
    address: str
    expires_at: float


@dataclass(frozen=True)
class PresenceConfig:
    """The relay's ``presence`` section at run time.

    Attributes:
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL; None: in memory.
        ttl_seconds: a route lapses this long after its last refresh.
        replica_id: this replica's name in routes (None: its advertise address).
        advertise: ``host:port`` other replicas reach this one at: with
            peering, its peer listener (None: ``peering.listen``, else the
            listen address; the host name standing in for a wildcard host).
    """

    redis_url: str | None = None
    ttl_seconds: float = DEFAULT_TTL_SECONDS
    replica_id: str | None = None
    advertise: str | None = None


class Presence(Protocol):
    """Routes to agent sessions, shared between replicas (or not)."""

    replica_id: str

    def register(self, cluster_id: str, session_id: int) -> None:
        """Record that this replica holds ``session_id`` of ``cluster_id``.

        Returns at once; a store is written in the background. A session id
        lower than one already registered by this replica for the cluster is
        ignored (fencing). Call ``unregister`` when the session ends.
        """
        ...

    def unregister(self, cluster_id: str, session_id: int) -> None:
        """Forget ``session_id`` of ``cluster_id`` if it is still the one
        registered; a newer registration is never removed. Returns at once."""
        ...

    def lookup(self, cluster_id: str) -> Awaitable[list[Route]]:
        """The live routes of ``cluster_id``, newest session first.

        Raises:
            PresenceUnavailable: the store did not answer.
        """
        ...

    async def live_clusters(self, cluster_ids: Sequence[str]) -> set[str]:
        """Which of ``cluster_ids`` have a live route on any replica (status).

        Raises:
            PresenceUnavailable: the store did not answer.
        """
        ...

    async def start(self) -> None:
        """Begin keeping the store up to date (never fails on an unreachable store)."""
        ...

    async def close(self) -> None:
        """Stop refreshing and release connections; routes lapse at their expiry."""
        ...


class SessionIds:
    """Fencing ids: the wall clock in microseconds, bumped to stay strictly
    increasing. Within one process every id is larger than the last; a
    restarted process (same replica id) starts above its predecessor's ids
    unless the wall clock stepped back by more than the downtime. Ids of
    different replicas order roughly by when the sessions began, which is
    only used to try the newest route first, never for correctness.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """A new id, larger than every id this object returned."""
        with self._lock:
            self._last = max(time.time_ns() // 1000, self._last + 1)
            return self._last


class MemoryPresence:
    """The single-replica default: this process's own sessions are the routes."""

    def __init__(self, replica_id: str, address: str) -> None:
        self.replica_id = replica_id
        self.address = address
        self._held: dict[str, int] = {}
        # What the metrics read of every presence (nothing fails in memory).
        self.reachable: bool | None = True
        self.errors = self.reasserted = self.fenced = 0

    def register(self, cluster_id: str, session_id: int) -> None:
        if self._held.get(cluster_id, 0) <= session_id:
            self._held[cluster_id] = session_id

    def unregister(self, cluster_id: str, session_id: int) -> None:
        if self._held.get(cluster_id) == session_id:
            del self._held[cluster_id]

    async def lookup(self, cluster_id: str) -> list[Route]:
        session_id = self._held.get(cluster_id)
        if session_id is None:
            return []
        return [Route(session_id, self.replica_id, self.address, math.inf)]

    async def live_clusters(self, cluster_ids: Sequence[str]) -> set[str]:
        return {cid for cid in cluster_ids if cid in self._held}

    def held(self) -> dict[str, int]:
        """Cluster id -> session id of every registration (a copy)."""
        return dict(self._held)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._held.clear()


class PresenceDirectory(Generic[S]):
    """A ``SessionDirectory`` that mirrors every change into ``presence``.

    The local directory stays the truth for this replica's sessions (routing
    reads it); presence gets one registration per live session, with a fresh
    session id, and loses it when the session stops being the live one.
    """

    def __init__(self, local: LocalDirectory[S], presence: Presence, ids: SessionIds) -> None:
        self.local = local
        self.presence = presence
        self._ids = ids
        self._session_ids: dict[S, int] = {}

    def register(self, cluster_id: str, session: S) -> S | None:
        previous = self.local.register(cluster_id, session)
        if previous is not None:
            # Replaced: its unregister will find it no longer live.
            self._session_ids.pop(previous, None)
        session_id = self._ids.next()
        self._session_ids[session] = session_id
        self.presence.register(cluster_id, session_id)
        return previous

    def unregister(self, cluster_id: str, session: S) -> bool:
        session_id = self._session_ids.pop(session, None)
        was_live = self.local.unregister(cluster_id, session)
        if was_live and session_id is not None:
            self.presence.unregister(cluster_id, session_id)
        return was_live

    def session_id(self, session: S) -> int | None:
        """The presence session id of a live session (None: not live)."""
        return self._session_ids.get(session)

    def get(self, cluster_id: str) -> S | None:
        return self.local.get(cluster_id)

    def is_present(self, cluster_id: str) -> bool:
        return self.local.is_present(cluster_id)

    async def wait_for(self, cluster_id: str, timeout: float, *, not_this: S | None = None) -> S | None:
        return await self.local.wait_for(cluster_id, timeout, not_this=not_this)

    def sessions(self) -> list[tuple[str, S]]:
        return self.local.sessions()
