"""The stream targets of the agent leg (relay <-> agent), fixed names both
sides must agree on.

On the client leg an OPEN's target is a cluster id (``<resourceGroup>/<name>``);
on the agent leg the relay opens streams to the agent and the agent opens one
stream to the relay, each naming what it wants by one of these. They live in
the tunnel package because it is the one package of ours that both ``relay``
and ``agent`` import; the core gives them no meaning (tunnel/PROTOCOL.md).
"""

from __future__ import annotations

__all__ = ["CENTRAL_RBAC_TARGET", "CONTROL_TARGET", "UPSTREAM_TARGET"]

#: Relay -> agent: a stream the agent pipes to its kube-aad-proxy (one per
#: kubectl connection).
UPSTREAM_TARGET = b"kube-aad-proxy"
#: Agent -> relay: the agent's metadata stream (one JSON object per line).
CONTROL_TARGET = b"control"
#: Relay -> agent: one central Kubernetes role list per stream (a JSON
#: document, then FIN; the agent answers one line): docs/central-rbac.md.
CENTRAL_RBAC_TARGET = b"central-rbac"
