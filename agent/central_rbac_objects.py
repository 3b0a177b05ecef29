"""The Kubernetes objects central roles become in a cluster (issue 18).

Four ClusterRoles, modelled on Arc's built-in Kubernetes roles, and one
binding per (principal, role, namespace): a ClusterRoleBinding for an
assignment on the cluster (or a scope above it), a RoleBinding in the
namespace for a namespace assignment. Each binding's only subject is the
principal's **central group**, ``arc-central:user:<name>`` or
``arc-central:group:<name>``, where ``<name>`` is the id as kube-aad-proxy
impersonates it: with the assignee issuer's user or group prefix
(identity/issuer_names.py), so the same id under two issuers is two groups: kube-aad-proxy adds that group to a request's
``Impersonate-Group`` only while the agent's list is fresh and names the
principal, so revocation and a disconnected agent take effect on the next
request, before the binding itself is deleted. Every object carries the
``OWNED_LABEL``: the agent deletes owned objects nobody wants any more and
never touches anything else. Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_API = f"{RBAC_GROUP}/v1"
OWNED_LABEL = "cluster-connect.dev/central-rbac"
OWNED_VALUE = "owned"
CENTRAL_GROUP_PREFIX = "arc-central:"
_READ = ["get", "list", "watch"]
_WRITE = ["create", "update", "patch", "delete", "deletecollection"]
# Namespaced workload objects every role may read (never Secrets, never RBAC).
_CORE_READ = ["pods", "pods/log", "pods/status", "services", "services/status", "endpoints", "configmaps",
              "persistentvolumeclaims", "persistentvolumeclaims/status", "replicationcontrollers",
              "replicationcontrollers/scale", "replicationcontrollers/status", "serviceaccounts", "events",
              "limitranges", "resourcequotas", "resourcequotas/status", "namespaces", "namespaces/status",
              "bindings", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "services/proxy"]
_CORE_WRITE = ["pods", "services", "endpoints", "configmaps", "persistentvolumeclaims", "replicationcontrollers",
               "replicationcontrollers/scale", "serviceaccounts", "secrets", "pods/attach", "pods/exec",
               "pods/portforward", "pods/proxy", "pods/eviction", "services/proxy", "serviceaccounts/token"]
_APPS = ["deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/scale",
         "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status", "daemonsets",
         "daemonsets/status", "controllerrevisions"]
_OTHER_GROUPS = [("batch", ["jobs", "jobs/status", "cronjobs", "cronjobs/status"]),
                 ("autoscaling", ["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
                 ("networking.k8s.io", ["ingresses", "ingresses/status", "networkpolicies"]),
                 ("policy", ["poddisruptionbudgets", "poddisruptionbudgets/status"]),
                 ("discovery.k8s.io", ["endpointslices"]),
                 ("events.k8s.io", ["events"])]
# Read verbs only on these (exec/attach/portforward/proxy read as "get" are
# writes in spirit: the viewer gets none of them).
_VIEWER_CORE = [r for r in _CORE_READ if r not in ("pods/attach", "pods/exec", "pods/portforward", "pods/proxy",
                                                   "services/proxy", "bindings")]


def _viewer_rules() -> list[dict[str, Any]]:
    return [{"apiGroups": [""], "resources": _VIEWER_CORE, "verbs": _READ},
            {"apiGroups": ["apps"], "resources": _APPS, "verbs": _READ},
            *({"apiGroups": [g], "resources": r, "verbs": _READ} for g, r in _OTHER_GROUPS)]


def _writer_rules() -> list[dict[str, Any]]:
    return [*_viewer_rules(),
            {"apiGroups": [""], "resources": ["secrets"], "verbs": _READ},
            {"apiGroups": [""], "resources": _CORE_WRITE, "verbs": _READ + _WRITE},
            {"apiGroups": ["apps"], "resources": _APPS, "verbs": _WRITE},
            *({"apiGroups": [g], "resources": r, "verbs": _WRITE} for g, r in _OTHER_GROUPS)]


def _admin_rules() -> list[dict[str, Any]]:
    # Everything in a namespace, Roles and RoleBindings included; never the
    # namespace object itself, quotas or limit ranges (those stay read-only).
    return [*_writer_rules(),
            {"apiGroups": [RBAC_GROUP], "resources": ["roles", "rolebindings"], "verbs": _READ + _WRITE},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"],
             "verbs": ["create"]}]


def _cluster_admin_rules() -> list[dict[str, Any]]:
    return [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]}]


ROLE_RULES = {
    "kubernetes-viewer": _viewer_rules,
    "kubernetes-writer": _writer_rules,
    "kubernetes-admin": _admin_rules,
    "kubernetes-cluster-admin": _cluster_admin_rules,
}


@dataclass(frozen=True)
class Assignment:
    """One central role assignment as the relay sent it."""

    id: str
    principal_id: str
    principal_type: str  # User, Group or ServicePrincipal
    role: str
    namespace: str | None
    principal_issuer: str = ""  # the assignee's exact ``iss``


def central_group(principal_type: str, name: str) -> str:
    """The group a principal's bindings name; ``name`` is its issuer-scoped
    name (the issuer's prefix, then the id). Users and service principals
    alike are ``user``: both are matched by the token's own ids."""
    kind = "group" if principal_type == "Group" else "user"
    return f"{CENTRAL_GROUP_PREFIX}{kind}:{name}"


def unprefixed_group(a: Assignment) -> str | None:
    """The central group of ``a`` when names carry no issuer prefix."""
    return central_group(a.principal_type, a.principal_id)


def cluster_role_name(role: str) -> str:
    """The ClusterRole of a central role, e.g. ``arc-central-kubernetes-viewer``."""
    return f"arc-central-{role}"


def _labels() -> dict[str, str]:
    return {OWNED_LABEL: OWNED_VALUE}


def desired_objects(assignments: Iterable[Assignment],
                    group_of: Callable[[Assignment], str | None] = unprefixed_group,
                    ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every owned object the list asks for, keyed by (kind, namespace, name);
    the four ClusterRoles always (they grant nothing unbound). ``group_of``
    gives an assignment's central group (None: bind nothing for it)."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for role, rules in ROLE_RULES.items():
        name = cluster_role_name(role)
        out[("ClusterRole", "", name)] = {"apiVersion": RBAC_API, "kind": "ClusterRole",
                                          "metadata": {"name": name, "labels": _labels()}, "rules": rules()}
    for a in assignments:
        group = group_of(a)
        if a.role not in ROLE_RULES or group is None:
            continue
        digest = hashlib.sha256(f"{a.role}\n{a.namespace or ''}\n{group}".encode()).hexdigest()[:20]
        name = f"arc-central-{digest}"
        kind = "RoleBinding" if a.namespace else "ClusterRoleBinding"
        metadata: dict[str, Any] = {"name": name, "labels": _labels(),
                                    "annotations": {"cluster-connect.dev/central-rbac-group": group,
                                                    "cluster-connect.dev/central-rbac-role": a.role}}
        if a.namespace:
            metadata["namespace"] = a.namespace
        out[(kind, a.namespace or "", name)] = {
            "apiVersion": RBAC_API, "kind": kind, "metadata": metadata,
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": cluster_role_name(a.role)},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": group}]}
    return out
