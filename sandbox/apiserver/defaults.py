"""Defaulting and validation on create/update, per kind: what the real API
server fills in (so kubectl shows familiar objects) and the checks that make
bad input a 422 instead of a stored mess."""

from __future__ import annotations

import base64
import re
from typing import Any

from sandbox.apiserver import status as st
from sandbox.apiserver.resources import ResourceType

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kinds whose names must be DNS-1123 labels rather than subdomains.
_LABEL_NAMED = {"Namespace", "Service"}
# RBAC names are path segments, not DNS names.
_FREE_NAMED = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def validate_name(rt: ResourceType, name: str) -> None:
    """Raises ApiError 422 when ``name`` is not valid for the kind."""
    if not name:
        raise st.invalid(rt.group, rt.kind, name, [("FieldValueRequired", "metadata.name",
                                                     "Required value: name or generateName is required")])
    if rt.kind in _FREE_NAMED:
        if "/" in name or name in (".", ".."):
            raise st.invalid(rt.group, rt.kind, name, [("FieldValueInvalid", "metadata.name",
                                                         f'Invalid value: "{name}": may not contain \'/\'')])
        return
    pattern = _DNS1123_LABEL if rt.kind in _LABEL_NAMED else _DNS1123_SUBDOMAIN
    limit = 63 if rt.kind in _LABEL_NAMED else 253
    if not pattern.match(name) or len(name) > limit:
        what = "RFC 1123 label" if rt.kind in _LABEL_NAMED else "RFC 1123 subdomain"
        raise st.invalid(rt.group, rt.kind, name, [(
            "FieldValueInvalid", "metadata.name",
            f'Invalid value: "{name}": a lowercase {what} must consist of lower case alphanumeric '
            "characters, '-' or '.', and must start and end with an alphanumeric character",
        )])


def _container_defaults(c: dict[str, Any]) -> None:
    image = c.get("image", "")
    c.setdefault("imagePullPolicy", "Always" if image.endswith(":latest") or ":" not in image else "IfNotPresent")
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for p in c.get("ports") or []:
        p.setdefault("protocol", "TCP")


def _pod_spec_defaults(spec: dict[str, Any]) -> None:
    for c in spec.get("containers") or []:
        _container_defaults(c)
    for c in spec.get("initContainers") or []:
        _container_defaults(c)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    if "serviceAccountName" not in spec:
        spec["serviceAccountName"] = spec.get("serviceAccount") or "default"
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)


def _validate_pod_spec(rt: ResourceType, name: str, spec: dict[str, Any], field: str) -> None:
    containers = spec.get("containers")
    if not containers:
        raise st.invalid(rt.group, rt.kind, name, [("FieldValueRequired", f"{field}.containers",
                                                     "Required value")])
    for i, c in enumerate(containers):
        if not c.get("name"):
            raise st.invalid(rt.group, rt.kind, name, [("FieldValueRequired", f"{field}.containers[{i}].name",
                                                         "Required value")])
        if not c.get("image"):
            raise st.invalid(rt.group, rt.kind, name, [("FieldValueRequired", f"{field}.containers[{i}].image",
                                                         "Required value")])


def apply_defaults(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Fill defaults and validate; raises ApiError 422 on invalid input."""
    name = obj.get("metadata", {}).get("name", "")
    kind = rt.kind
    if kind == "Pod":
        spec = obj.setdefault("spec", {})
        _validate_pod_spec(rt, name, spec, "spec")
        _pod_spec_defaults(spec)
        # Set by admission (Priority) on pods only, not on templates.
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
    elif kind == "Deployment":
        spec = obj.setdefault("spec", {})
        tmpl = spec.setdefault("template", {})
        _validate_pod_spec(rt, name, tmpl.setdefault("spec", {}), "spec.template.spec")
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        if not spec.get("selector"):
            raise st.invalid(rt.group, rt.kind, name, [("FieldValueRequired", "spec.selector", "Required value")])
        if any(labels.get(k) != v for k, v in sel.items()):
            raise st.invalid(rt.group, rt.kind, name, [(
                "FieldValueInvalid", "spec.template.metadata.labels",
                f"Invalid value: {labels}: `selector` does not match template `labels`")])
        _pod_spec_defaults(tmpl["spec"])
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.get("data") or {}
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        if data:
            obj["data"] = data
        for k, v in (obj.get("data") or {}).items():
            try:
                base64.b64decode(v, validate=True)
            except (ValueError, TypeError) as exc:
                raise st.invalid(rt.group, rt.kind, name, [("FieldValueInvalid", f"data[{k}]",
                                                             "Invalid value: illegal base64 data")]) from exc
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        if not obj.get("roleRef", {}).get("name"):
            raise st.invalid(rt.group, rt.kind, name, [("FieldValueRequired", "roleRef.name", "Required value")])
    elif kind == "ConfigMap":
        for k, v in (obj.get("data") or {}).items():
            if not isinstance(v, str):
                raise st.invalid(rt.group, rt.kind, name, [("FieldValueInvalid", f"data[{k}]",
                                                             "Invalid value: must be a string")])
