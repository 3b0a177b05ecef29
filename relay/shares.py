"""Bounded shares of agent streams, enforced before the relay opens one.

An agent session accepts a fixed number of concurrent streams shared by every
user of its cluster. Without shares one client session (or one user with
several) could hold all of them and leave everyone else none. The router takes
a :class:`StreamShare` slot for each OPEN before it opens the upstream stream
and gives it back when the routed stream ends (or was never opened):

- per principal per cluster (``limits.streams_per_principal_per_cluster``):
  one user cannot take a cluster's streams from other users;
- per client session (``limits.streams_per_client_session``): one arc-proxy
  cannot take every agent's streams at once.

A refusal is RESET ``TOO_MANY_STREAMS`` with a reason that names the bound
and its config key. Counts live in memory, one entry per principal and cluster
with streams open (entries at zero are dropped), so memory is bounded by the
streams open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRINCIPAL_KEY = "limits.streams_per_principal_per_cluster"
SESSION_KEY = "limits.streams_per_client_session"


@dataclass(slots=True)
class SessionShare:
    """The streams one client session holds (one per client session)."""

    limit: int
    open: int = 0


@dataclass
class StreamShares:
    """Counts of routed streams per (principal, cluster); see module docstring."""

    per_principal_per_cluster: int
    per_client_session: int
    _by_principal: dict[tuple[str, str], int] = field(default_factory=dict)

    def new_session(self) -> SessionShare:
        """The share of a new client session."""
        return SessionShare(self.per_client_session)

    def held(self, principal_key: str, cluster_id: str) -> int:
        """Streams ``principal_key`` now holds on ``cluster_id``."""
        return self._by_principal.get((principal_key, cluster_id), 0)

    def acquire(self, session: SessionShare, principal_key: str, cluster_id: str) -> str | None:
        """Take one slot; returns None on success, else the refusal reason.

        Call :meth:`release` with the same arguments exactly once after a
        successful ``acquire``.
        """
        if session.open >= session.limit:
            return (f"this client session has {session.open} streams open, its limit "
                    f"({SESSION_KEY}={session.limit}); close some and retry")
        key = (principal_key, cluster_id)
        held = self._by_principal.get(key, 0)
        if held >= self.per_principal_per_cluster:
            return (f"you have {held} streams open to cluster {cluster_id}, your limit "
                    f"({PRINCIPAL_KEY}={self.per_principal_per_cluster}); close some and retry")
        self._by_principal[key] = held + 1
        session.open += 1
        return None

    def release(self, session: SessionShare, principal_key: str, cluster_id: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        session.open -= 1
        key = (principal_key, cluster_id)
        held = self._by_principal.get(key, 0) - 1
        if held > 0:
            self._by_principal[key] = held
        else:
            self._by_principal.pop(key, None)
