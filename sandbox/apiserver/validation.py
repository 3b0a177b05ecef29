"""Server-side field validation (``fieldValidation=Strict|Warn|Ignore``) for
the top level and ``metadata`` of each kind: a typo such as ``spce:`` is a
400 under Strict and a ``Warning`` header under Warn, as in Kubernetes."""

from __future__ import annotations

from typing import Any

from sandbox.apiserver import status as st
from sandbox.apiserver.resources import ResourceType

_COMMON = {"apiVersion", "kind", "metadata"}
# Known top-level fields per kind; kinds not listed are not checked.
TOP_LEVEL: dict[str, set[str]] = {
    "Pod": {"spec", "status"},
    "Service": {"spec", "status"},
    "Namespace": {"spec", "status"},
    "Node": {"spec", "status"},
    "Deployment": {"spec", "status"},
    "ConfigMap": {"data", "binaryData", "immutable"},
    "Secret": {"data", "stringData", "type", "immutable"},
    "ServiceAccount": {"secrets", "imagePullSecrets", "automountServiceAccountToken"},
    "Role": {"rules"},
    "ClusterRole": {"rules", "aggregationRule"},
    "RoleBinding": {"subjects", "roleRef"},
    "ClusterRoleBinding": {"subjects", "roleRef"},
}
METADATA = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
            "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
            "ownerReferences", "finalizers", "managedFields"}


def unknown_fields(rt: ResourceType, obj: dict[str, Any]) -> list[str]:
    """Dotted paths of fields the kind does not have (top level and metadata only)."""
    allowed = TOP_LEVEL.get(rt.kind)
    if allowed is None:
        return []
    out = [k for k in obj if k not in _COMMON and k not in allowed]
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        out += [f"metadata.{k}" for k in meta if k not in METADATA]
    return out


def check(rt: ResourceType, obj: dict[str, Any], directive: str) -> list[str]:
    """Apply ``directive`` and drop the unknown fields from ``obj`` (the real
    decoder never keeps them); returns Warning header values under Warn.

    Raises:
        ApiError: 400 BadRequest listing the unknown fields (Strict).
    """
    unknown = unknown_fields(rt, obj)
    if not unknown:
        return []
    if directive == "Strict":
        listed = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise st.bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                             f"strict decoding error: {listed}")
    for f in unknown:
        if f.startswith("metadata."):
            obj["metadata"].pop(f[len("metadata."):], None)
        else:
            obj.pop(f, None)
    if directive == "Ignore":
        return []
    return [f'299 - "unknown field \\"{f}\\""' for f in unknown]
