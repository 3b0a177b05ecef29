"""Generic REST verbs over the store: get, list, watch, create, update,
patch, delete, deletecollection (plus the status subresource)."""

from __future__ import annotations

import base64
import copy
import json
import secrets
from typing import TYPE_CHECKING, Any

from sandbox.apiserver import codec, patch, scale, tables, validation, watch
from sandbox.apiserver import status as st
from sandbox.apiserver.defaults import apply_defaults, validate_name
from sandbox.apiserver.http import Request, Response
from sandbox.apiserver.resources import ResourceType, lookup
from sandbox.apiserver.routing import RequestInfo
from sandbox.apiserver.selectors import parse_field_selector, parse_label_selector
from sandbox.apiserver.store import now_rfc3339

if TYPE_CHECKING:
    from sandbox.apiserver.app import App

Obj = dict[str, Any]
NAMESPACES = lookup("", "v1", "namespaces")
# kube-apiserver's NamespaceLifecycle admission refuses to delete these.
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def _accept(req: Request) -> str:
    return req.header("accept") or ""


def _matcher(req: Request, rt: ResourceType) -> Any:
    labels = parse_label_selector(req.query.get("labelSelector", ""))
    fields = parse_field_selector(req.query.get("fieldSelector", ""), rt.kind)
    return lambda o: labels(o.get("metadata", {}).get("labels") or {}) and fields(o)


def _with_type(rt: ResourceType, obj: Obj) -> Obj:
    return {"kind": rt.kind, "apiVersion": rt.api_version, **{k: v for k, v in obj.items()
                                                              if k not in ("kind", "apiVersion")}}


def _respond(req: Request, rt: ResourceType, code: int, obj: Obj) -> Response:
    if tables.wants_table(_accept(req)):
        table = tables.to_table(rt.kind, [obj], include=req.query.get("includeObject", "Metadata"),
                                list_meta={"resourceVersion": obj.get("metadata", {}).get("resourceVersion", "")})
        return codec.json_response(code, table)
    return codec.json_response(code, obj)


def _check_scope(rt: ResourceType, info: RequestInfo) -> None:
    if not rt.namespaced and info.namespace and rt.plural != "namespaces":
        raise st.ApiError("NotFound", "the server could not find the requested resource")
    if rt.namespaced and not info.namespace and info.verb not in ("list", "watch", "deletecollection"):
        raise st.ApiError("NotFound", "the server could not find the requested resource")


def _namespace(rt: ResourceType, info: RequestInfo) -> str:
    return info.namespace if rt.namespaced else ""


async def handle(app: App, req: Request, info: RequestInfo, rt: ResourceType) -> Response:
    """Dispatch one resource request (authorization already done)."""
    _check_scope(rt, info)
    ns = _namespace(rt, info)
    verb = info.verb
    if info.subresource == "scale" and rt.kind == "Deployment":
        return scale.handle(app, req, info, rt)
    if info.subresource and info.subresource != "status":
        raise st.ApiError("NotFound", "the server could not find the requested resource")
    if verb == "get":
        return _respond(req, rt, 200, app.store.get(rt, ns, info.name))
    if verb == "list":
        return list_objects(app, req, rt, ns)
    if verb == "watch":
        return watch_objects(app, req, rt, ns, info)
    if verb == "create":
        return create(app, req, rt, ns)
    if verb == "update":
        return update(app, req, rt, ns, info)
    if verb == "patch":
        return patch_object(app, req, rt, ns, info)
    if verb == "delete":
        return codec.json_response(200, delete(app, rt, ns, info.name))
    if verb == "deletecollection":
        match = _matcher(req, rt)
        gone = [delete(app, rt, o["metadata"].get("namespace", ""), o["metadata"]["name"])
                for o in list(app.store.items(rt, ns)) if match(o)]
        return codec.json_response(200, {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                                         "metadata": {"resourceVersion": str(app.store.rv)},
                                         "items": [_strip_type(o) for o in gone]})
    raise st.ApiError("MethodNotAllowed", f"{verb} is not supported on resources of kind {rt.kind}", code=405)


def delete(app: App, rt: ResourceType, ns: str, name: str) -> Obj:
    """Delete one object. Pods first get a deletionTimestamp (a MODIFIED event,
    shown as Terminating) as with graceful deletion, then go at once: nothing
    runs that would need the grace period."""
    if rt.kind == "Namespace" and name in UNDELETABLE_NAMESPACES:
        raise st.ApiError("Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                          details={"name": name, "kind": "namespaces"})
    if rt.kind == "Pod":
        current = app.store.get(rt, ns, name)
        meta = current["metadata"]
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = now_rfc3339()
            meta["deletionGracePeriodSeconds"] = current.get("spec", {}).get("terminationGracePeriodSeconds", 30)
            app.store.update(rt, current, check_rv=False)
    return app.store.delete(rt, ns, name)


def query_int(req: Request, name: str) -> int:
    """An integer query parameter (0 when absent); 400 when not a number."""
    value = req.query.get(name) or "0"
    try:
        return int(value)
    except ValueError as exc:
        raise st.bad_request(f"invalid value for {name}: {value!r}: must be an integer") from exc


def _strip_type(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _encode_continue(rv: int, last: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{last[0]}/{last[1]}\x00"}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ns, name = raw["start"].rstrip("\x00").split("/", 1)
        return ns, name
    except (ValueError, KeyError, TypeError) as exc:
        raise st.bad_request("continue key is not valid: incorrect encoded start resourceVersion") from exc


def list_objects(app: App, req: Request, rt: ResourceType, ns: str) -> Response:
    """A list with selectors and ``limit``/``continue`` paging."""
    match = _matcher(req, rt)
    items = [o for o in app.store.items(rt, ns) if match(o)]
    if req.query.get("continue"):
        after = _decode_continue(req.query["continue"])
        items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
    meta: Obj = {"resourceVersion": str(app.store.rv)}
    limit = query_int(req, "limit")
    if limit > 0 and len(items) > limit:
        rest = len(items) - limit
        items = items[:limit]
        last = items[-1]["metadata"]
        meta["continue"] = _encode_continue(app.store.rv, (last.get("namespace", ""), last["name"]))
        meta["remainingItemCount"] = rest
    items = copy.deepcopy(items)
    if tables.wants_table(_accept(req)):
        return codec.json_response(200, tables.to_table(rt.kind, items, include=req.query.get("includeObject",
                                                                                              "Metadata"),
                                                        list_meta=meta))
    return codec.json_response(200, {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta,
                                     "items": [_strip_type(o) for o in items]})


def watch_objects(app: App, req: Request, rt: ResourceType, ns: str, info: RequestInfo) -> Response:
    """A chunked watch stream."""
    match = _matcher(req, rt)
    if info.name:
        base = match
        match = lambda o: base(o) and o["metadata"]["name"] == info.name  # noqa: E731
    as_table = tables.wants_table(_accept(req))
    include = req.query.get("includeObject", "Metadata")

    def render(ev_type: str, obj: Obj, first: bool) -> Obj:
        if as_table and ev_type in ("ADDED", "MODIFIED", "DELETED"):
            return tables.to_table(rt.kind, [obj], include=include, columns=first,
                                   list_meta={"resourceVersion": obj["metadata"].get("resourceVersion", "")})
        return obj

    stream = watch.stream(app.store, rt, ns, req.query, match, render)
    return Response(200, content_type="application/json", stream=stream)


def _check_body(rt: ResourceType, obj: Any, ns: str) -> Obj:
    if not isinstance(obj, dict):
        raise st.bad_request("the request body must be a JSON object")
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind and kind != rt.kind:
        raise st.bad_request(f"the kind of the object ({kind}) does not match the resource ({rt.kind})")
    if api_version and api_version != rt.api_version:
        raise st.bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                             f"version ({rt.api_version})")
    obj = _with_type(rt, obj)
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise st.bad_request("metadata must be an object")
    body_ns = meta.get("namespace")
    if rt.namespaced:
        if body_ns and body_ns != ns:
            raise st.bad_request("the namespace of the provided object does not match the namespace sent "
                                 "on the request")
        meta["namespace"] = ns
    else:
        meta.pop("namespace", None)
    meta.pop("managedFields", None)
    return dict(obj)


def create(app: App, req: Request, rt: ResourceType, ns: str) -> Response:
    """POST a new object (201), or a review/virtual object."""
    body = codec.decode(req)
    obj = _check_body(rt, body, ns)
    warnings = _validate_fields(req, rt, obj)
    meta = obj["metadata"]
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + "".join(secrets.choice(_SUFFIX_CHARS) for _ in range(5))
    validate_name(rt, meta.get("name", ""))
    if rt.namespaced and NAMESPACES and app.store.peek(NAMESPACES, "", ns) is None:
        raise st.not_found("", "namespaces", ns)
    if rt.namespaced and NAMESPACES:
        ns_obj = app.store.peek(NAMESPACES, "", ns)
        if ns_obj and ns_obj.get("status", {}).get("phase") == "Terminating":
            raise st.ApiError("Forbidden", f'{rt.plural} "{meta["name"]}" is forbidden: unable to create new '
                              f"content in namespace {ns} because it is being terminated")
    if rt.kind != "Node":
        obj.pop("status", None)  # status is the controllers' to set, except for registered nodes
    apply_defaults(rt, obj)
    app.controllers.prepare(rt, obj)
    if _dry_run(req):
        return codec.json_response(201, obj, headers=warnings)
    created = app.store.create(rt, obj)
    return codec.json_response(201, created, headers=warnings)


def _validate_fields(req: Request, rt: ResourceType, obj: Obj) -> list[tuple[str, str]]:
    # The server default is Warn; kubectl sends Strict unless --validate says otherwise.
    directive = req.query.get("fieldValidation") or "Warn"
    return [("Warning", w) for w in validation.check(rt, obj, directive)]


def _dry_run(req: Request) -> bool:
    return any(k == "dryRun" and v == "All" for k, v in req.query_list)


def update(app: App, req: Request, rt: ResourceType, ns: str, info: RequestInfo) -> Response:
    """PUT a whole object (or its status)."""
    obj = _check_body(rt, codec.decode(req), ns)
    name = obj["metadata"].get("name") or info.name
    if name != info.name:
        raise st.bad_request(f"the name of the object ({name}) does not match the name on the URL ({info.name})")
    obj["metadata"]["name"] = name
    warnings = _validate_fields(req, rt, obj)
    resp = _store_update(app, req, rt, ns, info, obj)
    resp.headers.extend(warnings)
    return resp


def _store_update(app: App, req: Request, rt: ResourceType, ns: str, info: RequestInfo, obj: Obj) -> Response:
    current = app.store.get(rt, ns, info.name)
    if info.subresource == "status":
        # Only status changes through /status; everything else through the main resource.
        obj = {**current, "status": obj.get("status", {}),
               "metadata": {**current["metadata"], "resourceVersion": obj["metadata"].get("resourceVersion", "")}}
    elif "status" in current and rt.kind not in ("Node",):
        obj["status"] = current["status"]
    apply_defaults(rt, obj)
    app.controllers.prepare(rt, obj, current)
    if _dry_run(req):
        return codec.json_response(200, obj)
    return codec.json_response(200, app.store.update(rt, obj))


def patch_object(app: App, req: Request, rt: ResourceType, ns: str, info: RequestInfo) -> Response:
    """PATCH: merge, strategic merge or JSON patch against the stored object."""
    current = app.store.get(rt, ns, info.name)
    mt = codec.media_type(req)
    if mt == "application/apply-patch+yaml" or mt == "application/apply-patch+cbor":
        raise st.ApiError("UnsupportedMediaType", "server-side apply is not supported by the sandbox: "
                          "use client-side apply (kubectl apply without --server-side)", code=415)
    try:
        body = json.loads(req.body or b"null")
    except ValueError as exc:
        raise st.bad_request("the patch body is not valid JSON") from exc
    if mt == "application/json-patch+json":
        result = patch.json_patch(current, body)
    elif mt == "application/merge-patch+json":
        result = patch.merge_patch(current, body)
    elif mt == "application/strategic-merge-patch+json":
        result = patch.strategic_merge_patch(current, body)
    else:
        raise st.ApiError("UnsupportedMediaType", f"the patch type {mt!r} is not supported", code=415)
    if not isinstance(result, dict):
        raise st.bad_request("the patch did not produce an object")
    warnings = _validate_fields(req, rt, result)
    meta = result.setdefault("metadata", {})
    meta["name"], meta["uid"] = info.name, current["metadata"]["uid"]
    if rt.namespaced:
        meta["namespace"] = ns
    result = _with_type(rt, result)
    if info.subresource != "status" and "status" in current and rt.kind not in ("Node",):
        result["status"] = current["status"]
    apply_defaults(rt, result)
    app.controllers.prepare(rt, result, current)
    if _dry_run(req):
        return codec.json_response(200, result)
    # A resourceVersion inside the patch is a precondition; otherwise last write wins.
    if not (isinstance(body, dict) and body.get("metadata", {}).get("resourceVersion")):
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
    resp = _respond(req, rt, 200, app.store.update(rt, result))
    resp.headers.extend(warnings)
    return resp
