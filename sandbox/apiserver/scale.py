"""The ``deployments/<name>/scale`` subresource (autoscaling/v1 Scale), as
``kubectl scale`` reads and patches it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sandbox.apiserver import codec, patch
from sandbox.apiserver import status as st
from sandbox.apiserver.http import Request, Response
from sandbox.apiserver.resources import ResourceType
from sandbox.apiserver.routing import RequestInfo

if TYPE_CHECKING:
    from sandbox.apiserver.app import App

Obj = dict[str, Any]


def to_scale(obj: Obj) -> Obj:
    """The Scale view of a Deployment."""
    meta = obj["metadata"]
    spec = obj.get("spec", {})
    sel = spec.get("selector", {}).get("matchLabels") or {}
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if k in meta},
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {"replicas": obj.get("status", {}).get("replicas", 0),
                   "selector": ",".join(f"{k}={v}" for k, v in sorted(sel.items()))},
    }


def handle(app: App, req: Request, info: RequestInfo, rt: ResourceType) -> Response:
    """GET, PUT or PATCH the Scale; writes change the Deployment's spec.replicas."""
    current = app.store.get(rt, info.namespace, info.name)
    scale = to_scale(current)
    if info.verb == "get":
        return codec.json_response(200, scale)
    if info.verb == "update":
        body = codec.decode(req)
    elif info.verb == "patch":
        try:
            patch_body = json.loads(req.body or b"null")
        except ValueError as exc:
            raise st.bad_request("the patch body is not valid JSON") from exc
        mt = codec.media_type(req)
        if mt == "application/json-patch+json":
            body = patch.json_patch(scale, patch_body)
        elif mt in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            body = patch.merge_patch(scale, patch_body)
        else:
            raise st.ApiError("UnsupportedMediaType", f"the patch type {mt!r} is not supported", code=415)
    else:
        raise st.ApiError("MethodNotAllowed", f"{info.verb} is not supported on scale", code=405)
    if not isinstance(body, dict):
        raise st.bad_request("the request body must be an object")
    replicas = (body.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise st.invalid("autoscaling", "Scale", info.name, [
            ("FieldValueInvalid", "spec.replicas", f"Invalid value: {replicas!r}: must be greater than or equal to 0")])
    sent_rv = (body.get("metadata") or {}).get("resourceVersion")
    if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
        raise st.conflict(rt.group, rt.plural, info.name, "the object has been modified; please apply your "
                          "changes to the latest version and try again")
    before = app.store.get(rt, info.namespace, info.name)
    current["spec"]["replicas"] = replicas
    app.controllers.prepare(rt, current, before)
    return codec.json_response(200, to_scale(app.store.update(rt, current, check_rv=False)))
