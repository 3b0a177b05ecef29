"""Central Kubernetes roles (issue 18; Arc's "Azure RBAC"): role assignments
made at the relay that are enforced *inside* a cluster by its agent.

The four roles mirror Arc's built-in ones; what each lets a person do in the
cluster is written in agent/central_rbac_objects.py (the ClusterRoles the agent
reconciles). At the relay they only let the holder see the cluster (``read``,
as Arc's roles include ``connectedClusters/read``); reaching it still takes
``cluster-user``, as in Arc.

Scopes: every scope of relay.roles plus one namespace of a cluster,
``/resourceGroups/RG/clusters/NAME/namespaces/NS``, which only these roles
may use (a relay role on a namespace would mean nothing).
"""

from __future__ import annotations

import re

KUBERNETES_ROLES: tuple[str, ...] = (
    "kubernetes-viewer", "kubernetes-writer", "kubernetes-admin", "kubernetes-cluster-admin",
)
# Relay actions each central Kubernetes role grants (relay.roles.ROLES).
KUBERNETES_ROLE_ACTIONS: dict[str, frozenset[str]] = {role: frozenset({"read"}) for role in KUBERNETES_ROLES}

_NAMESPACE_SUFFIX = re.compile(r"/namespaces/([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)\Z")


def is_kubernetes_role(role: str) -> bool:
    """Whether ``role`` is one of the four central Kubernetes roles."""
    return role in KUBERNETES_ROLES


def namespace_of(scope: str) -> str | None:
    """The namespace of a namespace scope, or None for any other scope."""
    found = _NAMESPACE_SUFFIX.search(scope)
    return found.group(1) if found else None


def cluster_scope_of(scope: str) -> str:
    """The cluster scope a namespace scope is in (other scopes unchanged)."""
    found = _NAMESPACE_SUFFIX.search(scope)
    return scope[: found.start()] if found else scope


def scope_role_errors(role: object, scope: object) -> list[str]:
    """What is wrong with putting ``role`` on ``scope`` (empty when fine):
    a namespace scope takes only a central Kubernetes role."""
    if isinstance(scope, str) and namespace_of(scope) is not None and not (
            isinstance(role, str) and is_kubernetes_role(role)):
        return [f"a namespace scope takes only the roles {', '.join(KUBERNETES_ROLES)}"]
    return []
