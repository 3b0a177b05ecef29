"""The watch stream: JSON events, one chunk each, with resourceVersion
semantics, bookmarks, initial events and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sandbox.apiserver import status as st
from sandbox.apiserver.resources import ResourceType
from sandbox.apiserver.store import Store, WatchEvent

# Bookmarks go out about this often when the client allows them (Kubernetes: ~1 min).
BOOKMARK_INTERVAL = 30.0
# Without timeoutSeconds a watch ends after a random 30-60 min, as upstream.
DEFAULT_TIMEOUT = (1800, 3600)

Obj = dict[str, Any]
Filter = Callable[[Obj], bool]
Render = Callable[[str, Obj, bool], Obj]


def _line(ev_type: str, obj: Obj) -> bytes:
    return json.dumps({"type": ev_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _bookmark(rt: ResourceType, rv: int, initial_end: bool = False) -> Obj:
    meta: Obj = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


def _filtered_type(ev: WatchEvent, matches: Filter) -> str | None:
    """The event type a selector-filtered watcher sees, or None to skip it."""
    now = matches(ev.obj)
    if ev.type != "MODIFIED" or ev.old is None:
        return ev.type if now else None
    before = matches(ev.old)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    return "DELETED" if before else None


def parse_rv(value: str | None) -> int | None:
    """An integer resourceVersion, None for "" / "0" / absent.

    Raises:
        ApiError: 400 when the value is not a number.
    """
    if value is None or value in ("", "0"):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise st.bad_request(f"invalid resource version: {value}") from exc


def stream(store: Store, rt: ResourceType, namespace: str, query: dict[str, str],
                 matches: Filter, render: Render) -> AsyncIterator[bytes]:
    """Yield encoded events until timeout, client disconnect (cancellation) or shutdown.

    ``render(type, obj, first)`` shapes each object (plain, or a one-row Table).
    The watch is registered before this generator is first iterated so no
    event between the request and the stream is lost.
    """
    rv_param = query.get("resourceVersion", "")
    send_initial = query.get("sendInitialEvents", "").lower() == "true"
    bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
    since = parse_rv(rv_param)
    try:
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else float(
            random.randint(*DEFAULT_TIMEOUT))
    except ValueError as exc:
        raise st.bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds']!r}") from exc
    initial: list[tuple[str, Obj]] = []
    expired: st.ApiError | None = None
    try:
        if since is None or send_initial:
            # rv "" / "0" (or sendInitialEvents): the current state as ADDED, then live.
            initial = [("ADDED", o) for o in store.items(rt, namespace) if matches(o)]
            watcher, backlog = store.watch(rt, namespace, None)
        else:
            watcher, backlog = store.watch(rt, namespace, since)
    except st.ApiError as exc:
        expired, watcher, backlog = exc, None, []
    start_rv = store.rv

    async def gen() -> AsyncIterator[bytes]:
        first = True
        if expired is not None:
            yield _line("ERROR", expired.status())
            return
        assert watcher is not None
        try:
            deadline = time.monotonic() + timeout
            for initial_type, obj in initial:
                yield _line(initial_type, render(initial_type, obj, first))
                first = False
            if send_initial and bookmarks:
                yield _line("BOOKMARK", _bookmark(rt, start_rv, initial_end=True))
            pending: list[WatchEvent] = list(backlog)
            next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
            while True:
                while pending:
                    ev = pending.pop(0)
                    ev_type = _filtered_type(ev, matches)
                    if ev_type:
                        yield _line(ev_type, render(ev_type, ev.obj, first))
                        first = False
                now = time.monotonic()
                if now >= deadline:
                    return
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        yield _line("BOOKMARK", _bookmark(rt, store.rv))
                        next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
                    continue
                if item is None:
                    return  # closed: shutdown or the watcher fell too far behind
                pending.append(item)
        finally:
            with contextlib.suppress(Exception):
                store.unwatch(watcher)

    return gen()
