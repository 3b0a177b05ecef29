"""Request attributes from method, path and query, as Kubernetes'
RequestInfoFactory computes them (the input to RBAC and to dispatch)."""

from __future__ import annotations

from dataclasses import dataclass

_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete",
                 "GET": "get", "HEAD": "get"}


@dataclass(frozen=True)
class RequestInfo:
    """What a request addresses. ``is_resource`` False means a non-resource
    URL (``/version``, ``/healthz``, discovery roots, OpenAPI)."""

    path: str
    verb: str
    is_resource: bool = False
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    legacy_watch: bool = False
    # The bare group version root (``/api/v1``, ``/apis/apps/v1``).
    is_gv_root: bool = False


def parse(method: str, path: str, query: dict[str, str]) -> RequestInfo:
    """Classify one request (``path`` without the query string)."""
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    parts = [p for p in path.strip("/").split("/") if p != ""]
    if not parts or parts[0] not in ("api", "apis"):
        return RequestInfo(path, verb)
    if parts[0] == "api":
        if len(parts) < 2:
            return RequestInfo(path, verb)
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 3:
            return RequestInfo(path, verb)
        group, version, rest = parts[1], parts[2], parts[3:]
    if not rest:
        return RequestInfo(path, verb, group=group, version=version, is_gv_root=True)
    legacy_watch = False
    if rest[0] == "watch":
        legacy_watch = True
        rest = rest[1:]
        verb = "watch"
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    elif rest and rest[0] == "namespaces" and len(rest) == 2:
        # /api/v1/namespaces/<ns>: the namespace object itself, whose
        # "namespace" attribute is its own name as in Kubernetes.
        namespace = rest[1]
    if not rest:
        return RequestInfo(path, verb)
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not legacy_watch:
        wants_watch = query.get("watch", "").lower() in ("true", "1")
        if verb == "get" and not subresource and (wants_watch or not name):
            verb = "watch" if wants_watch else "list"
        elif verb == "delete" and not name:
            verb = "deletecollection"
    return RequestInfo(path, verb, True, group, version, namespace, resource, subresource, name,
                       legacy_watch)
