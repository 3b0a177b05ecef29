"""The request pipeline: authentication, impersonation, authorization,
audit, then dispatch to discovery, OpenAPI, REST, reviews, logs or the
streaming subresources."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sandbox.apiserver import codec, discovery, openapi, openapi_v2, rest, reviews, routing
from sandbox.apiserver import status as st
from sandbox.apiserver.authn import AuthenticationFailed, Authenticator, UserInfo
from sandbox.apiserver.controllers import Controllers
from sandbox.apiserver.http import Request, Response
from sandbox.apiserver.impersonation import has_impersonation, impersonate
from sandbox.apiserver.logs import serve_log
from sandbox.apiserver.rbac import Attributes, Authorizer
from sandbox.apiserver.resources import lookup
from sandbox.apiserver.store import Store
from sandbox.apiserver.upgrade import STREAMING_SUBRESOURCES, serve_streaming

log = logging.getLogger("sandbox.apiserver")
# The audit trail kept in memory for tests; oldest records are dropped beyond this.
AUDIT_LIMIT = 10_000
# First minor version whose API server also requires "create" on a websocket exec GET.
CREATE_CHECK_FROM_MINOR = 35


@dataclass(frozen=True)
class AuditRecord:
    """One request as the audit log records it."""

    user: str
    verb: str
    path: str
    status: int
    impersonated_by: str = ""
    content_type: str = ""


class App:
    """Everything a request needs; one instance per server."""

    def __init__(self, store: Store, authn: Authenticator, kube_version: str, ca_pem: bytes,
                 server_address: str) -> None:
        self.store = store
        self.authn = authn
        self.authz = Authorizer(store)
        self.kube_version = kube_version
        self.server_address = server_address
        self.controllers = Controllers(store, authn, ca_pem)
        self.audit: list[AuditRecord] = []
        major, minor = kube_version.split(".")[:2]
        self.major, self.minor = major, minor

    async def handle(self, req: Request) -> Response | None:
        """Serve one request; every failure becomes a Status reply."""
        started = time.monotonic()
        user: UserInfo | None = None
        caller = ""
        code = 500
        verb = req.method.lower()
        try:
            user = self._authenticate(req)
            if has_impersonation(req.headers):
                real = user
                user = impersonate(real, req.headers, self.authz)
                caller = real.name  # only once impersonation was allowed
            info = routing.parse(req.method, req.path, req.query)
            verb = info.verb
            resp = await self._dispatch(req, info, user)
            code = 101 if resp is None else resp.status
            return resp
        except st.ApiError as exc:
            code = exc.code
            return codec.json_response(exc.code, exc.status())
        except Exception:
            log.exception("event=request_failed method=%s path=%s", req.method, req.path)
            code = 500
            return codec.json_response(500, st.failure(500, "InternalError", "Internal error occurred"))
        finally:
            self.audit.append(AuditRecord(user.name if user else "", verb, req.path, code, caller,
                                          req.header("content-type") or ""))
            if len(self.audit) > AUDIT_LIMIT:
                del self.audit[: len(self.audit) - AUDIT_LIMIT]
            log.debug("event=request method=%s path=%s user=%s code=%s ms=%.1f", req.method, req.path,
                      user.name if user else "-", code, (time.monotonic() - started) * 1000)

    def _authenticate(self, req: Request) -> UserInfo:
        auth = req.header("authorization") or ""
        bearer = None
        if auth[:7].lower() == "bearer ":
            bearer = auth[7:].strip()
        try:
            user = self.authn.authenticate(bearer, req.peer_cert)
        except AuthenticationFailed:
            raise st.ApiError("Unauthorized", "Unauthorized", code=401) from None
        return user

    def _authorize(self, user: UserInfo, attrs: Attributes, path: str) -> None:
        allowed, reason = self.authz.authorize(user, attrs)
        if not allowed:
            raise st.forbidden(user.name, attrs.verb, attrs.group, attrs.resource, attrs.subresource,
                               attrs.namespace, attrs.name, path, reason)

    async def _dispatch(self, req: Request, info: routing.RequestInfo, user: UserInfo) -> Response | None:
        if not info.is_resource:
            self._authorize(user, Attributes(req.method.lower() if req.method != "HEAD" else "get",
                                             path=req.path), req.path)
            if req.path == "/debug/audit":
                return self._debug_audit(user)
            return self._non_resource(req, info)
        attrs = Attributes(info.verb, info.group, info.resource, info.subresource, info.namespace, info.name)
        # Authorization comes before the lookup, as upstream: unknown types are 403 for the unauthorized.
        if info.subresource in STREAMING_SUBRESOURCES:
            # A websocket GET is authorized as "get" (RequestInfo maps the method); from
            # 1.35 also as "create" (gate AuthorizePodWebsocketUpgradeCreatePermission,
            # beta and on in 1.35, kubernetes/kubernetes#134577). SPDY POST is "create".
            if req.method == "GET" and int(self.minor) >= CREATE_CHECK_FROM_MINOR:
                self._authorize(user, Attributes("create", **_noverb(attrs)), req.path)
            self._authorize(user, attrs, req.path)
            if info.resource != "pods" or info.group:
                raise st.ApiError("NotFound", "the server could not find the requested resource")
            return await serve_streaming(self, req, info, user)
        self._authorize(user, attrs, req.path)
        rt = lookup(info.group, info.version, info.resource)
        if rt is None:
            raise st.ApiError("NotFound", "the server could not find the requested resource")
        if rt.virtual:
            if info.verb != "create":
                raise st.ApiError("MethodNotAllowed", f"{info.verb} is not supported on {rt.plural}", code=405)
            return reviews.create_review(self, req, rt, user)
        if info.subresource == "token" and rt.plural == "serviceaccounts" and info.verb == "create":
            return reviews.token_request(self, req, info)
        if info.subresource == "log" and rt.plural == "pods" and info.verb == "get":
            return serve_log(self, req, info)
        return await rest.handle(self, req, info, rt)

    def _debug_audit(self, user: UserInfo) -> Response:
        """``GET /debug/audit`` (sandbox only, static admin only): the audit trail as
        JSON, so tests driving a separate API server process can prove that a
        refused request never reached it. Not a Kubernetes API."""
        if user.name != "admin" or "system:masters" not in user.groups:
            raise st.forbidden(user.name, "get", "", "", "", "", "", "/debug/audit",
                               "only the sandbox admin may read the audit trail")
        items = [{"user": r.user, "verb": r.verb, "path": r.path, "status": r.status,
                  "impersonatedBy": r.impersonated_by} for r in self.audit]
        return codec.json_response(200, {"items": items})

    def _non_resource(self, req: Request, info: routing.RequestInfo) -> Response:
        path = req.path.rstrip("/") or "/"
        accept = req.header("accept") or ""
        if path == "/version":
            return codec.json_response(200, self.version_info())
        if path in ("/healthz", "/livez", "/readyz"):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        if path in ("/api", "/apis"):
            agg = discovery.aggregated_version(accept)
            if agg:
                return codec.json_response(200, discovery.aggregated(path == "/api", agg),
                                           content_type=discovery.aggregated_content_type(agg))
            body = discovery.api_versions(self.server_address) if path == "/api" else discovery.api_group_list()
            return codec.json_response(200, body)
        if info.is_gv_root:
            resources = discovery.api_resource_list(info.group, info.version)
            if resources is not None:
                return codec.json_response(200, resources)
        elif path.startswith("/apis/") and path.count("/") == 2:
            group = discovery.api_group(path.split("/")[2])
            if group is not None:
                return codec.json_response(200, group)
        if path == "/openapi/v2":
            return Response(200, openapi_v2.document(self.kube_version), openapi_v2.CONTENT_TYPE)
        if path.startswith("/openapi/"):
            doc = openapi.document(path, req.query)
            if doc is not None:
                return codec.json_response(200, doc)
            raise st.ApiError("NotFound", "the server could not find the requested resource", code=404)
        raise st.ApiError("NotFound", "the server could not find the requested resource")

    def version_info(self) -> dict[str, Any]:
        """``GET /version``; kubectl's dispatcher picks its binary from major/minor."""
        return {"major": self.major, "minor": self.minor, "emulationMajor": self.major,
                "emulationMinor": self.minor, "gitVersion": f"v{self.kube_version}",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
                "platform": "linux/amd64"}


def _noverb(attrs: Attributes) -> dict[str, str]:
    return {"group": attrs.group, "resource": attrs.resource, "subresource": attrs.subresource,
            "namespace": attrs.namespace, "name": attrs.name}
