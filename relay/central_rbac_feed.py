"""The relay's side of central Kubernetes roles (issue 18): tell each agent
which central role assignments concern its cluster.

Theory of operation: one loop per relay. It wakes when an assignment is put
or deleted through this relay, when central RBAC is switched for a cluster,
when an agent connects, and every ``POLL_SECONDS`` (changes made through
another replica are seen then). Each wake reads the assignments of the four
Kubernetes roles and the enabled clusters (two queries for the whole relay,
not one per agent), builds one document per cluster and pushes it to each
agent session of this replica whose document changed, or, for an enabled
cluster, whose last copy is ``RESEND_SECONDS`` old: the agent treats a list
it has not heard confirmed within its staleness bound as gone (fail closed).

A push is one relay-opened stream with target ``central-rbac``: the JSON
document, FIN; the agent answers one line (``ok`` or ``refused: why``). One
push per session at a time; a change during a push is sent by the next wake.

The document (version 2)::

    {"version": 2, "cluster": "rg/name", "enabled": true,
     "assignments": [{"id", "principalId", "principalIssuer", "principalType", "role", "namespace"}]}

``namespace`` is null for an assignment on the cluster or a scope above it.
``principalIssuer`` is the assignee's exact ``iss`` (relay/roles.py): the agent
grants an assignment only to a token of that issuer, under that issuer's
prefixed names (identity/issuer_names.py). An assignment made before issuers
(``principalIssuer`` "") matches nobody at the relay and is not sent.
Version 1 had no issuer: an agent of that version refuses this document and
fails closed rather than granting an id to every issuer's token.
A disabled cluster gets ``enabled: false`` and no assignments (the agent then
removes every object it owns), once per session and on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.central_rbac_store import CentralRbacStore
from relay.kubernetes_roles import is_kubernetes_role, namespace_of
from relay.roles import RoleAssignment, cluster_scope, scope_covers
from tunnel import CENTRAL_RBAC_TARGET, StreamRefused, StreamReset, TunnelClosed, TunnelSession

if TYPE_CHECKING:
    from relay.state import RelayState

log = logging.getLogger("relay")

FEED_VERSION = 2
# Changes made through another replica reach this replica's agents within
# this (plus one push): well inside the 10 s from assign to effect.
POLL_SECONDS = 3.0
# An enabled cluster's list is re-sent this often even when unchanged: the
# agent's staleness bound (agent config central_rbac.max_staleness_seconds,
# default 90) must be several of these.
RESEND_SECONDS = 30.0
# One document at most this big (~200 bytes an assignment: ~5000 of them);
# a bigger one is not sent (logged) and the agent, hearing nothing, fails
# closed after its staleness bound. The agent refuses bigger ones too.
MAX_FEED_BYTES = 1024 * 1024
# A push (open, write, the agent's answer) not done within this is abandoned.
PUSH_TIMEOUT = 10.0
# The agent's answer is one short line.
MAX_ANSWER_BYTES = 512


@dataclass(frozen=True)
class _Sent:
    document: bytes
    at: float


def cluster_document(cluster_id: str, enabled: bool, assignments: list[RoleAssignment]) -> bytes:
    """The version-2 document for one cluster (stable bytes: sorted by id)."""
    items: list[dict[str, Any]] = []
    if enabled:
        group, _, name = cluster_id.partition("/")
        scope = cluster_scope(group, name)
        for a in sorted(assignments, key=lambda a: a.id):
            if not is_kubernetes_role(a.role) or not a.principal_issuer:
                continue
            namespace = namespace_of(a.scope)
            if namespace is not None:
                if a.scope != f"{scope}/namespaces/{namespace}":
                    continue
            elif not scope_covers(a.scope, scope):
                continue
            items.append({"id": a.id, "principalId": a.principal_id, "principalIssuer": a.principal_issuer,
                          "principalType": a.principal_type, "role": a.role, "namespace": namespace})
    doc = {"version": FEED_VERSION, "cluster": cluster_id, "enabled": enabled, "assignments": items}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class CentralRbacFeed:
    """Pushes each local agent its cluster's central role list.

    Call :meth:`start` once, :meth:`wake` after any change, :meth:`stop` at
    shutdown.
    """

    def __init__(self, state: RelayState, store: CentralRbacStore, *,
                 poll_seconds: float = POLL_SECONDS, resend_seconds: float = RESEND_SECONDS) -> None:
        self.state = state
        self.store = store
        self.poll_seconds = poll_seconds
        self.resend_seconds = resend_seconds
        self.pushes = 0
        self._wake = asyncio.Event()
        self._sent: dict[TunnelSession, _Sent] = {}
        self._pushing: set[TunnelSession] = set()
        self._latest: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        """Run the loop in the background."""
        self._task = asyncio.ensure_future(self._run())

    def wake(self) -> None:
        """Something changed (an assignment, the switch, a new agent session): push now."""
        self._wake.set()

    async def stop(self) -> None:
        """End the loop (pushes in flight end with their sessions)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.push_round()
            except Exception as exc:  # the database is down: the next round tries again
                if not self._failing:
                    log.warning("central rbac lists not read error=%s: retrying every %g s",
                                type(exc).__name__, self.poll_seconds)
                self._failing = True
                continue
            self._failing = False

    async def push_round(self) -> None:
        """Build the documents of the clusters with a session here and push
        those that changed or are due."""
        sessions = {s: cid for s, (cid, _) in list(self.state.agent_fingerprints.items()) if not s.closed}
        for gone in [s for s in self._sent if s not in sessions]:
            del self._sent[gone]
        if not sessions:
            return
        enabled = await self.store.enabled_clusters()
        assignments = [a for a in await self.state.roles.list_all() if is_kubernetes_role(a.role)]
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._latest = {}
        for session, cid in sessions.items():
            doc = self._latest.get(cid)
            if doc is None:
                doc = self._latest[cid] = cluster_document(cid, cid in enabled, assignments)
            last = self._sent.get(session)
            due = last is None or last.document != doc or (
                cid in enabled and now - last.at >= self.resend_seconds)
            if not due or session in self._pushing:
                continue
            if len(doc) > MAX_FEED_BYTES:
                if last is None or last.document != doc:
                    log.warning("central rbac list not sent cluster=%s reason='%d bytes, over the %d bound': "
                                "fewer assignments on this cluster", cid, len(doc), MAX_FEED_BYTES)
                    self._sent[session] = _Sent(doc, now)
                continue
            self._pushing.add(session)
            self.state.spawn(self._push(session, cid, doc))

    async def _push(self, session: TunnelSession, cid: str, doc: bytes) -> None:
        answer = b""
        try:
            async with asyncio.timeout(PUSH_TIMEOUT):
                stream = await session.open_stream(CENTRAL_RBAC_TARGET)
                try:
                    await stream.write(doc)
                    await stream.write_eof()
                    while len(answer) <= MAX_ANSWER_BYTES and (chunk := await stream.read(MAX_ANSWER_BYTES)):
                        answer += chunk
                finally:
                    await stream.aclose()
        except (StreamRefused, StreamReset, TunnelClosed, TimeoutError) as exc:
            log.info("central rbac list not delivered cluster=%s reason=%r", cid,
                     getattr(exc, "reason", "") or type(exc).__name__)
            return
        finally:
            self._pushing.discard(session)
        self.pushes += 1
        self._sent[session] = _Sent(doc, asyncio.get_running_loop().time())
        text = answer.decode("utf-8", "replace").strip()[:200]
        if text != "ok":
            log.warning("central rbac list refused by agent cluster=%s answer=%r", cid, text)
        else:
            log.debug("central rbac list delivered cluster=%s bytes=%d", cid, len(doc))
        if self._latest.get(cid, doc) != doc:
            self.wake()  # changed while we pushed
