"""Create-only endpoints: TokenRequest, SelfSubjectReview,
SelfSubjectAccessReview, SelfSubjectRulesReview, TokenReview."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sandbox.apiserver import codec
from sandbox.apiserver import status as st
from sandbox.apiserver.authn import AuthenticationFailed, UserInfo
from sandbox.apiserver.http import Request, Response
from sandbox.apiserver.rbac import Attributes
from sandbox.apiserver.resources import ResourceType, lookup
from sandbox.apiserver.routing import RequestInfo

if TYPE_CHECKING:
    from sandbox.apiserver.app import App

Obj = dict[str, Any]
SERVICE_ACCOUNTS = lookup("", "v1", "serviceaccounts")
# TokenRequest bounds, as kube-apiserver enforces them.
MIN_TOKEN_SECONDS = 600
DEFAULT_TOKEN_SECONDS = 3600
MAX_TOKEN_SECONDS = 48 * 3600


def _body(req: Request) -> Obj:
    body = codec.decode(req)
    if not isinstance(body, dict):
        raise st.bad_request("the request body must be an object")
    return body


def token_request(app: App, req: Request, info: RequestInfo) -> Response:
    """``POST serviceaccounts/<name>/token`` (kubectl create token)."""
    assert SERVICE_ACCOUNTS is not None
    sa = app.store.get(SERVICE_ACCOUNTS, info.namespace, info.name)
    body = _body(req)
    spec = body.get("spec") or {}
    seconds = int(spec.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
    if seconds < MIN_TOKEN_SECONDS:
        raise st.invalid("authentication.k8s.io", "TokenRequest", "", [
            ("FieldValueInvalid", "spec.expirationSeconds",
             f"Invalid value: {seconds}: may not specify a duration less than 10 minutes")])
    seconds = min(seconds, MAX_TOKEN_SECONDS)
    token, exp = app.authn.mint_bound(info.namespace, info.name, sa["metadata"]["uid"],
                                      audiences=list(spec.get("audiences") or []),
                                      expiration_seconds=seconds, bound=spec.get("boundObjectRef"))
    spec["expirationSeconds"] = seconds
    if not spec.get("audiences"):
        spec["audiences"] = ["https://kubernetes.default.svc"]
    when = dt.datetime.fromtimestamp(exp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = body.get("metadata") or {}
    meta.update(name=info.name, namespace=info.namespace, creationTimestamp=None)
    out = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": meta,
           "spec": spec, "status": {"token": token, "expirationTimestamp": when}}
    return codec.json_response(201, out)


def _access_attrs(spec: Obj) -> Attributes:
    ra = spec.get("resourceAttributes")
    if ra:
        return Attributes(ra.get("verb", ""), ra.get("group", ""), ra.get("resource", ""),
                          ra.get("subresource", ""), ra.get("namespace", ""), ra.get("name", ""))
    nra = spec.get("nonResourceAttributes") or {}
    return Attributes(nra.get("verb", ""), path=nra.get("path", ""))


def create_review(app: App, req: Request, rt: ResourceType, user: UserInfo) -> Response:
    """The review kinds: nothing is stored, the reply carries a status."""
    body = _body(req)
    out: Obj = {"kind": rt.kind, "apiVersion": rt.api_version,
                "metadata": {**(body.get("metadata") or {}), "creationTimestamp": None}}
    if rt.kind == "SelfSubjectReview":
        out["status"] = {"userInfo": user.to_json()}
    elif rt.kind in ("SelfSubjectAccessReview", "SubjectAccessReview"):
        spec = body.get("spec") or {}
        subject = user
        if rt.kind == "SubjectAccessReview":
            subject = UserInfo(spec.get("user", ""), spec.get("uid", ""), tuple(spec.get("groups") or []),
                               spec.get("extra") or {})
        allowed, reason = app.authz.authorize(subject, _access_attrs(spec))
        out["spec"] = spec
        out["status"] = {"allowed": allowed, **({"reason": reason} if reason else {})}
    elif rt.kind == "SelfSubjectRulesReview":
        ns = (body.get("spec") or {}).get("namespace", "")
        rules = app.authz.rules_for(user, ns)
        out["spec"] = body.get("spec") or {}
        out["status"] = {
            "resourceRules": [{k: r[k] for k in ("verbs", "apiGroups", "resources", "resourceNames") if k in r}
                              for r in rules if "nonResourceURLs" not in r],
            "nonResourceRules": [{"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}
                                 for r in rules if "nonResourceURLs" in r],
            "incomplete": False,
        }
    elif rt.kind == "TokenReview":
        spec = body.get("spec") or {}
        try:
            reviewed = app.authn.authenticate(spec.get("token", ""), None)
            out["status"] = {"authenticated": reviewed.name != "system:anonymous", "user": reviewed.to_json(),
                             "audiences": ["https://kubernetes.default.svc"]}
        except AuthenticationFailed:
            out["status"] = {"authenticated": False, "error": "invalid bearer token"}
        out["spec"] = spec
    else:
        raise st.ApiError("MethodNotAllowed", f"create is not supported for {rt.kind}", code=405)
    return codec.json_response(201, out)
