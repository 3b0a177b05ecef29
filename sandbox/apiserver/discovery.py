"""Discovery documents: legacy (/api, /apis, per group version) and
aggregated (apidiscovery.k8s.io v2 and v2beta1, negotiated by Accept)."""

from __future__ import annotations

from typing import Any

from sandbox.apiserver.resources import GROUP_VERSIONS, ResourceType, types_in

_SUB_VERBS = {
    "status": ["get", "patch", "update"],
    "scale": ["get", "patch", "update"],
    "log": ["get"],
    "exec": ["create", "get"],
    "attach": ["create", "get"],
    "portforward": ["create", "get"],
    "token": ["create"],
    "binding": ["create"],
    "eviction": ["create"],
    "finalize": ["update"],
}
_SUB_KINDS = {"scale": ("autoscaling", "v1", "Scale"), "token": ("authentication.k8s.io", "v1", "TokenRequest"),
              "binding": ("", "v1", "Binding"), "eviction": ("policy", "v1", "Eviction"),
              "exec": ("", "v1", "PodExecOptions"), "attach": ("", "v1", "PodAttachOptions"),
              "portforward": ("", "v1", "PodPortForwardOptions")}


def aggregated_version(accept: str) -> str | None:
    """``v2`` or ``v2beta1`` when the client asks for aggregated discovery, else None."""
    for part in accept.split(","):
        params = dict(
            p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p
        )
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            if params.get("v") in ("v2", "v2beta1"):
                return params["v"]
    return None


def aggregated_content_type(version: str) -> str:
    """The Content-Type the client checks to accept an aggregated reply."""
    return f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"


def api_versions(server_address: str) -> dict[str, Any]:
    """``GET /api``."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_entry(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in GROUP_VERSIONS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    """``GET /apis``."""
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_entry(g) for g in GROUP_VERSIONS if g]}


def api_group(group: str) -> dict[str, Any] | None:
    """``GET /apis/<group>``."""
    if group not in GROUP_VERSIONS or not group:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group)}


def _legacy_resource(rt: ResourceType) -> dict[str, Any]:
    out: dict[str, Any] = {"name": rt.plural, "singularName": rt.singular_name, "namespaced": rt.namespaced,
                           "kind": rt.kind, "verbs": list(rt.verbs)}
    if rt.short_names:
        out["shortNames"] = list(rt.short_names)
    if rt.categories:
        out["categories"] = list(rt.categories)
    return out


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``GET /api/v1`` or ``/apis/<group>/<version>``."""
    types = types_in(group, version)
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for rt in types:
        resources.append(_legacy_resource(rt))
        for sub in rt.subresources:
            g, v, kind = _SUB_KINDS.get(sub, (rt.group, rt.version, rt.kind))
            entry: dict[str, Any] = {"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                     "kind": kind, "verbs": _SUB_VERBS.get(sub, ["get"])}
            if g != rt.group or v != rt.version:
                entry.update(group=g, version=v)
            resources.append(entry)
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": resources}


def _aggregated_resource(rt: ResourceType) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular_name,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        out["shortNames"] = list(rt.short_names)
    if rt.categories:
        out["categories"] = list(rt.categories)
    subs = []
    for sub in rt.subresources:
        g, v, kind = _SUB_KINDS.get(sub, (rt.group, rt.version, rt.kind))
        subs.append({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": kind},
                     "verbs": _SUB_VERBS.get(sub, ["get"])})
    if subs:
        out["subresources"] = subs
    return out


def aggregated(core: bool, version: str) -> dict[str, Any]:
    """``GET /api`` (core=True) or ``/apis`` as an APIGroupDiscoveryList."""
    items = []
    for group, versions in GROUP_VERSIONS.items():
        if (group == "") != core:
            continue
        items.append({
            "metadata": {"name": group, "creationTimestamp": None},
            "versions": [
                {"version": v, "resources": [_aggregated_resource(rt) for rt in types_in(group, v)],
                 "freshness": "Current"}
                for v in versions
            ],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}
