"""The agent's side of central Kubernetes roles (issue 18).

The relay pushes this cluster's list over the agent's session (one
``central-rbac`` stream per list: relay/central_rbac_feed.py); this module

- checks each list (version 2, this cluster, at most ``MAX_FEED_BYTES``, well
  formed) and refuses a bad one with one log line, keeping the previous list;
- hands the accepted list to a :class:`~agent.central_rbac_reconcile.Reconciler`
  (one background task, latest list wins) that keeps the owned
  ClusterRoles/bindings in step; ``enabled: false`` removes them all;
- answers kube-aad-proxy, per request, which central groups to impersonate
  (:meth:`CentralRbac.groups_for`): those of the principal's assignments,
  only while the list was confirmed within ``max_staleness`` seconds.

An assignment belongs to its assignee's issuer (``principalIssuer``, as the
relay's own roles: relay/roles.py). It is granted only to a token of that
issuer, and its central group carries the name kube-aad-proxy impersonates
for that issuer (its user or group prefix, identity/issuer_names.py;
:meth:`CentralRbac.use_names`), so no issuer's token reaches a binding made
for another issuer's principal of the same id. An assignment of an issuer
this agent does not trust is ignored (no token of it gets in). After
  that (agent cut off from the relay) nothing central is granted: fail closed,
  while native RBAC keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.central_rbac_objects import Assignment, central_group, desired_objects
from agent.central_rbac_reconcile import Reconciler
from agent.kube_aad_proxy.names import NameMapper
from tunnel import StreamReset, TunnelClosed, TunnelStream

log = logging.getLogger("agent")

FEED_VERSION = 2
# The relay sends at most this much (relay/central_rbac_feed.py); a bigger
# list is refused, the previous one kept.
MAX_FEED_BYTES = 1024 * 1024
# A list is re-sent every 30 s; a few missed re-sends are tolerated.
DEFAULT_MAX_STALENESS = 90.0
# A reconcile that failed (API server error, a namespace not created yet) is
# retried after RETRY_FIRST s, doubling up to RETRY_MAX s, and at once when a
# new list comes: the relay's re-sends alone would retry only every 30 s.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
_ROLES = ("kubernetes-viewer", "kubernetes-writer", "kubernetes-admin", "kubernetes-cluster-admin")
_TYPES = ("User", "Group", "ServicePrincipal")
_MAX_FIELD = 256
_MAX_NAMESPACE = 63
_MAX_ISSUER = 2048

# What the audit line says about the central mode for one request.
OFF = "off"
STALE = "stale"


class FeedRefused(Exception):
    """A list that is not taken; ``reason`` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(value: Any, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable() and " " not in value


def parse_feed(data: bytes, cluster_id: str) -> tuple[bool, tuple[Assignment, ...]]:
    """(enabled, assignments) of one version-2 list for ``cluster_id``.

    Raises:
        FeedRefused: too large, not JSON, another version or cluster, or a bad entry.
    """
    if len(data) > MAX_FEED_BYTES:
        raise FeedRefused(f"larger than {MAX_FEED_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise FeedRefused("not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != FEED_VERSION:
        raise FeedRefused(f"not a version {FEED_VERSION} list")
    if doc.get("cluster") != cluster_id:
        raise FeedRefused("for another cluster")
    enabled, items = doc.get("enabled"), doc.get("assignments")
    if not isinstance(enabled, bool) or not isinstance(items, list):
        raise FeedRefused("enabled or assignments missing")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise FeedRefused(f"assignment {i} is not an object")
        ns = item.get("namespace")
        if not (_text(item.get("id"), _MAX_FIELD) and _text(item.get("principalId"), _MAX_FIELD)
                and _text(item.get("principalIssuer"), _MAX_ISSUER)
                and item.get("principalType") in _TYPES and item.get("role") in _ROLES
                and (ns is None or _text(ns, _MAX_NAMESPACE))):
            raise FeedRefused(f"assignment {i} is malformed")
        out.append(Assignment(item["id"], item["principalId"], item["principalType"], item["role"], ns,
                              item["principalIssuer"]))
    return enabled, tuple(out) if enabled else ()


class CentralRbac:
    """The current list, its freshness, and the reconciler behind it.

    Args:
        cluster_id: ``<resourceGroup>/<name>``: lists for others are refused.
        reconciler: applies lists to the cluster (None: groups only, tests).
        retry: (first, largest) delay in seconds before a failed reconcile is
            tried again; it doubles between them.
        max_staleness: seconds a list counts without the relay confirming it.
        clock: monotonic seconds.
        names: kube-aad-proxy's names of each trusted issuer (the policy
            keeps it current: :meth:`use_names`); an issuer absent from it is
            not trusted and its assignments are ignored.
    """

    def __init__(self, cluster_id: str, reconciler: Reconciler | None, *,
                 max_staleness: float = DEFAULT_MAX_STALENESS,
                 clock: Callable[[], float] = time.monotonic,
                 names: NameMapper | None = None,
                 retry: tuple[float, float] = (RETRY_FIRST, RETRY_MAX)) -> None:
        self.cluster_id = cluster_id
        self.retry_first, self.retry_max = retry
        self.reconcile_failures = 0  # failed reconciles since the last one that worked
        self.names = names or NameMapper()
        self.reconciler = reconciler
        self.max_staleness = max_staleness
        self.clock = clock
        self.enabled = False
        self.assignments: tuple[Assignment, ...] = ()
        self.received_at: float | None = None
        self.lists_accepted = 0
        self.lists_refused = 0
        self.reconciled = asyncio.Event()  # set after each reconcile that worked
        # (issuer, id) -> central groups
        self._users: dict[tuple[str, str], tuple[str, ...]] = {}
        self._groups: dict[tuple[str, str], tuple[str, ...]] = {}
        self._wanted: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stale_logged = False

    # -- the relay's lists -------------------------------------------------------

    async def on_stream(self, stream: TunnelStream) -> None:
        """Serve one ``central-rbac`` stream: read the list, take or refuse
        it, answer one line (``ok`` / ``refused: why``)."""
        stream.accept()
        data = b""
        try:
            while chunk := await stream.read(65536):
                data += chunk
                if len(data) > MAX_FEED_BYTES:
                    break
            answer = self.receive(data)
            await stream.write(answer.encode() + b"\n")
            await stream.write_eof()
        except (StreamReset, TunnelClosed):
            pass
        finally:
            await stream.aclose()

    def receive(self, data: bytes) -> str:
        """Take or refuse one list; returns the answer line for the relay."""
        try:
            enabled, assignments = parse_feed(data, self.cluster_id)
        except FeedRefused as refused:
            self.lists_refused += 1
            log.warning("central rbac list refused reason=%r; the previous list stays", refused.reason)
            return f"refused: {refused.reason}"
        changed = (enabled, assignments) != (self.enabled, self.assignments)
        self.enabled, self.assignments = enabled, assignments
        self.received_at = self.clock()
        self.lists_accepted += 1
        self._index()
        if self._stale_logged:
            log.info("central rbac list fresh again assignments=%d", len(assignments))
            self._stale_logged = False
        if changed:
            log.info("central rbac list accepted enabled=%s assignments=%d", enabled, len(assignments))
        self._want_reconcile()
        return "ok"

    def use_names(self, names: NameMapper) -> None:
        """Name central groups as ``names`` does from now on (kube-aad-proxy's
        issuers were reloaded): re-index and reconcile the bindings."""
        self.names = names
        self._index()
        if self.received_at is not None:
            self._want_reconcile()

    def central_group_of(self, a: Assignment) -> str | None:
        """``a``'s central group: its id as kube-aad-proxy impersonates it for
        its issuer (that issuer's user or group prefix); None when this agent
        does not trust the issuer."""
        prefixes = self.names.prefixes.get(a.principal_issuer)
        if prefixes is None:
            return None
        prefix = prefixes.groups if a.principal_type == "Group" else prefixes.username
        return central_group(a.principal_type, prefix + a.principal_id)

    def _index(self) -> None:
        users: dict[tuple[str, str], list[str]] = {}
        groups: dict[tuple[str, str], list[str]] = {}
        for a in self.assignments:
            group = self.central_group_of(a)
            if group is None:
                continue
            where = groups if a.principal_type == "Group" else users
            where.setdefault((a.principal_issuer, a.principal_id), []).append(group)
        self._users = {k: tuple(dict.fromkeys(v)) for k, v in users.items()}
        self._groups = {k: tuple(dict.fromkeys(v)) for k, v in groups.items()}

    # -- kube-aad-proxy's question -------------------------------------------------

    def groups_for(self, issuer: str, user_ids: Iterable[str],
                   group_ids: Iterable[str]) -> tuple[tuple[str, ...], str]:
        """The central groups to impersonate for a token of ``issuer`` (its
        exact ``iss``) whose principal is known by ``user_ids`` (oid,
        ``iss#sub``) and ``group_ids`` (only that issuer's assignments
        count), and what the
        audit line says: ``off``, ``stale``, or the groups joined by ``,``
        (``-`` when the principal holds no central role)."""
        if not self.enabled or self.received_at is None:
            return (), OFF
        if self.clock() - self.received_at > self.max_staleness:
            if not self._stale_logged:
                self._stale_logged = True
                log.warning("central rbac list stale: not confirmed by the relay for %.0f s (bound %g s); "
                            "central roles grant nothing until the agent reconnects",
                            self.clock() - self.received_at, self.max_staleness)
            return (), STALE
        found: list[str] = []
        for uid in user_ids:
            found += self._users.get((issuer, uid), ())
        for gid in group_ids:
            found += self._groups.get((issuer, gid), ())
        groups = tuple(dict.fromkeys(found))
        return groups, ",".join(groups) or "-"

    def stale_warning(self) -> str | None:
        """The reason kube-aad-proxy adds to a 403 while the list is stale
        (enabled, not confirmed within the bound), else None."""
        if not self.enabled or self.received_at is None:
            return None
        age = self.clock() - self.received_at
        if age <= self.max_staleness:
            return None
        return (f"central Kubernetes roles are not applied: the agent has not heard from the relay "
                f"for {age:.0f} s (bound {self.max_staleness:g} s)")

    # -- the reconciler ------------------------------------------------------------

    def _want_reconcile(self) -> None:
        if self.reconciler is None:
            return
        if self._wanted is None:
            self._wanted = asyncio.Event()
            self._task = asyncio.ensure_future(self._reconcile_loop())
        self.reconciled.clear()
        self._wanted.set()

    async def _reconcile_loop(self) -> None:
        assert self._wanted is not None and self.reconciler is not None
        delay: float | None = None  # None: wait for a list; else retry after it
        while True:
            if delay is None:
                await self._wanted.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), delay)
            self._wanted.clear()
            desired = desired_objects(self.assignments, self.central_group_of) if self.enabled else {}
            if await self.reconciler.apply(desired):
                if self.reconcile_failures:
                    log.info("central rbac reconcile worked after %d failed attempts", self.reconcile_failures)
                self.reconcile_failures, delay = 0, None
                if not self._wanted.is_set():
                    self.reconciled.set()
            else:
                self.reconcile_failures += 1
                delay = self.retry_first if delay is None else min(delay * 2, self.retry_max)

    async def close(self) -> None:
        """Stop the reconciler (owned objects stay: a restarted agent adopts them)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
