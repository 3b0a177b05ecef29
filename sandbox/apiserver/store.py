"""The in-memory object store: one global resourceVersion counter, a bounded
event history for watch resumption, and live watcher queues.

Everything runs on one event loop and no method awaits, so each mutation and
the events it emits are atomic with respect to list and watch.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sandbox.apiserver import status as st
from sandbox.apiserver.resources import ResourceType, storage_key

# Watch events kept for resumption; older resourceVersions get 410 Expired.
HISTORY_LIMIT = 4096
# A watcher that falls this far behind is closed (the client re-lists).
WATCHER_QUEUE_LIMIT = 10_000

Obj = dict[str, Any]
Key = tuple[str, str]
Listener = Callable[[str, ResourceType, Obj, Obj | None], None]


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it (seconds, UTC, ``Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    """One change: ``type`` is ADDED, MODIFIED or DELETED."""

    rv: int
    key: Key
    type: str
    obj: Obj
    # The object before a MODIFIED change: a filtered watch turns a change
    # across its selector into ADDED or DELETED, as the watch cache does.
    old: Obj | None = None


@dataclass
class Watcher:
    """A live subscription to one (group, plural), optionally one namespace."""

    key: Key
    namespace: str
    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def offer(self, ev: WatchEvent) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= WATCHER_QUEUE_LIMIT:
            self.close()
            return
        self.queue.put_nowait(ev)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class Store:
    """Objects by (group, plural) then (namespace, name)."""

    def __init__(self) -> None:
        self.rv = 1
        self._objects: dict[Key, dict[tuple[str, str], Obj]] = {}
        self._history: deque[WatchEvent] = deque(maxlen=HISTORY_LIMIT)
        self._watchers: list[Watcher] = []
        self.listeners: list[Listener] = []

    # ---- reads --------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        """A deep copy of one object.

        Raises:
            ApiError: 404 NotFound.
        """
        obj = self._objects.get(storage_key(rt), {}).get((namespace, name))
        if obj is None:
            raise st.not_found(rt.group, rt.plural, name)
        return copy.deepcopy(obj)

    def peek(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        """The stored object itself (no copy; do not mutate), or None."""
        return self._objects.get(storage_key(rt), {}).get((namespace, name))

    def items(self, rt: ResourceType, namespace: str = "") -> Iterator[Obj]:
        """Stored objects (no copies) sorted by namespace then name."""
        bucket = self._objects.get(storage_key(rt), {})
        for (ns, _name), obj in sorted(bucket.items(), key=lambda kv: kv[0]):
            if not namespace or ns == namespace:
                yield obj

    # ---- writes -------------------------------------------------------------

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, kind: str, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        ev = WatchEvent(self.rv, storage_key(rt), kind, copy.deepcopy(obj),
                        copy.deepcopy(old) if kind == "MODIFIED" and old is not None else None)
        self._history.append(ev)
        ns = obj.get("metadata", {}).get("namespace", "")
        for w in self._watchers:
            if w.key == ev.key and (not w.namespace or w.namespace == ns):
                w.offer(ev)
        for listener in list(self.listeners):
            listener(kind, rt, obj, old)

    def create(self, rt: ResourceType, obj: Obj) -> Obj:
        """Store a new object; fills uid, resourceVersion, creationTimestamp, generation.

        Raises:
            ApiError: 409 AlreadyExists.
        """
        meta = obj.setdefault("metadata", {})
        ns, name = meta.get("namespace", ""), meta["name"]
        bucket = self._objects.setdefault(storage_key(rt), {})
        if (ns, name) in bucket:
            raise st.already_exists(rt.group, rt.plural, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["resourceVersion"] = self._bump()
        if "spec" in obj or rt.kind in ("Deployment",):
            meta["generation"] = 1
        for k in ("deletionTimestamp", "selfLink"):
            meta.pop(k, None)
        bucket[(ns, name)] = obj
        self._emit("ADDED", rt, obj, None)
        return copy.deepcopy(obj)

    def update(self, rt: ResourceType, obj: Obj, *, check_rv: bool = True) -> Obj:
        """Replace an object. A non-empty stale ``metadata.resourceVersion`` is a 409.

        Raises:
            ApiError: 404 NotFound, 409 Conflict.
        """
        meta = obj.setdefault("metadata", {})
        ns, name = meta.get("namespace", ""), meta["name"]
        bucket = self._objects.setdefault(storage_key(rt), {})
        old = bucket.get((ns, name))
        if old is None:
            raise st.not_found(rt.group, rt.plural, name)
        old_meta = old["metadata"]
        sent_rv = meta.get("resourceVersion")
        if check_rv and sent_rv and sent_rv != old_meta["resourceVersion"]:
            raise st.conflict(
                rt.group, rt.plural, name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        # Server-owned fields survive whatever the client sent.
        for k in ("uid", "creationTimestamp", "generation"):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        if "spec" in obj and obj.get("spec") != old.get("spec"):
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if obj == old:
            return copy.deepcopy(old)  # no-op update: no new resourceVersion, no event
        meta["resourceVersion"] = self._bump()
        bucket[(ns, name)] = obj
        self._emit("MODIFIED", rt, obj, old)
        return copy.deepcopy(obj)

    def delete(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        """Remove an object; the DELETED event carries a fresh resourceVersion.

        Raises:
            ApiError: 404 NotFound.
        """
        bucket = self._objects.get(storage_key(rt), {})
        old = bucket.pop((namespace, name), None)
        if old is None:
            raise st.not_found(rt.group, rt.plural, name)
        old["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", rt, old, old)
        return copy.deepcopy(old)

    # ---- watch --------------------------------------------------------------

    def oldest_rv(self) -> int:
        """The lowest resourceVersion a watch may resume from."""
        return self._history[0].rv - 1 if len(self._history) == HISTORY_LIMIT else 0

    def watch(self, rt: ResourceType, namespace: str, since: int | None) -> tuple[Watcher, list[WatchEvent]]:
        """Subscribe; with ``since``, also return the history after it.

        Raises:
            ApiError: 410 Expired when ``since`` is older than the kept history.
        """
        backlog: list[WatchEvent] = []
        key = storage_key(rt)
        if since is not None:
            if since < self.oldest_rv():
                raise st.ApiError(
                    "Expired", f"too old resource version: {since} ({self.oldest_rv() + 1})", code=410
                )
            for ev in self._history:
                if ev.rv > since and ev.key == key:
                    ns = ev.obj.get("metadata", {}).get("namespace", "")
                    if not namespace or ns == namespace:
                        backlog.append(ev)
        w = Watcher(key, namespace)
        self._watchers.append(w)
        return w, backlog

    def unwatch(self, w: Watcher) -> None:
        """Drop a subscription (idempotent)."""
        w.closed = True
        if w in self._watchers:
            self._watchers.remove(w)

    def close_watchers(self) -> None:
        """End every live watch (server shutdown)."""
        for w in list(self._watchers):
            w.close()
        self._watchers.clear()
