"""Management REST API under ``/api/v1`` (documented in ``relay/openapi.json``).

Every call carries the user's OIDC bearer and is authorised by role
assignments (``relay.roles``). Authorisation is decided on the scope before
looking anything up, so a caller without a role learns nothing about what
exists (403 whether or not the cluster is there).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from cryptography import x509

from certs import fingerprint_sha256
from identity import Principal
from relay.agent_endpoint import end_sessions_of_old_key
from relay.json_body import BodyRefused, read_json_object
from relay.names import has_control_characters, valid_name
from relay.registry import Cluster, cluster_id
from relay.roles import (
    ROLES,
    Action,
    RoleAssignment,
    assignment_errors,
    cluster_scope,
    looks_like_name,
    name_assignment_error,
    valid_assignment_id,
    valid_scope,
)
from relay.state import STATE, RelayState, authenticate, json_error

log = logging.getLogger("relay")

# What a cluster's optional descriptive fields may hold: they are shown in
# arcctl's tables and logged, so no control characters and a short bound.
MAX_LOCATION = 90
_DNS_NAME_RE = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


async def _principal(request: web.Request) -> Principal:
    result = await authenticate(request, "api")
    if isinstance(result, web.Response):
        raise _Abort(result)
    return result


class _Abort(Exception):
    """Carries a ready response out of a helper."""

    def __init__(self, response: web.Response) -> None:
        super().__init__()
        self.response = response


async def _require(request: web.Request, principal: Principal, action: Action, scope: str, role_hint: str) -> None:
    state = request.app[STATE]
    if not await state.may(principal, action, scope):
        state.metrics.auth_failures.labels("api", "forbidden").inc()
        log.info("api forbidden principal=%s issuer=%s action=%s scope=%s", principal.name,
                 principal.issuer, action, scope)
        raise _Abort(json_error(
            403, "Forbidden", f"principal {principal.name} has no {role_hint} role at scope {scope} "
            "(nor at a scope containing it)"
        ))


async def _json_body(request: web.Request) -> dict[str, Any]:
    config = request.app[STATE].config
    try:
        return await read_json_object(request, max_bytes=config.api_max_body_bytes,
                                      max_depth=config.api_max_body_depth)
    except BodyRefused as refused:
        log.info("api body refused method=%s path=%r status=%d reason=%r", request.method,
                 request.rel_url.raw_path[:200], refused.status, refused.message)
        raise _Abort(json_error(refused.status, refused.code, refused.message)) from None


def _names(request: web.Request) -> tuple[str, str]:
    rg, name = request.match_info["rg"], request.match_info["name"]
    for label, value in (("resource group", rg), ("cluster name", name)):
        if not valid_name(value):
            raise _Abort(json_error(
                400, "InvalidName",
                f"{label} {value!r} must be 1-63 letters, digits, '.', '_' or '-', starting alphanumeric",
            ))
    return rg, name


def _valid_pem_certificate(value: Any) -> bool:
    if not isinstance(value, str) or "BEGIN CERTIFICATE" not in value:
        return False
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        return False
    return True


def _descriptive_field_problem(body: dict[str, Any]) -> str:
    """What is wrong with ``location``/``tlsServerName`` (empty when both are fine)."""
    location, server_name = body.get("location", ""), body.get("tlsServerName", "")
    if not isinstance(location, str) or len(location) > MAX_LOCATION or has_control_characters(location):
        return f"location must be a string of at most {MAX_LOCATION} characters without control characters"
    if not isinstance(server_name, str) or (server_name and not _DNS_NAME_RE.fullmatch(server_name)):
        return "tlsServerName must be a DNS name (letters, digits, '-' labels joined by '.')"
    return ""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _handler(fn: Handler) -> Handler:
    """Answers with the response a helper aborted with (``_Abort``)."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except _Abort as abort:
            return abort.response
    wrapped.__name__ = fn.__name__
    return wrapped


async def _cluster_caller(request: web.Request, action: Action, role_hint: str) -> tuple[Principal, str, str]:
    """The caller of a call on ``{rg}/{name}``, authorised for ``action`` at the
    cluster's scope (before anything is looked up); its names."""
    principal = await _principal(request)
    rg, name = _names(request)
    await _require(request, principal, action, cluster_scope(rg, name), role_hint)
    return principal, rg, name


@_handler
async def put_cluster(request: web.Request) -> web.Response:
    """PUT /api/v1/resourceGroups/{rg}/clusters/{name}: register or update."""
    state = request.app[STATE]
    principal, rg, name = await _cluster_caller(request, "write", "onboarding")
    body = await _json_body(request)
    if not _valid_pem_certificate(body.get("agentPublicKeyCertificate")):
        return json_error(400, "InvalidRequest", "agentPublicKeyCertificate must be a PEM certificate")
    serving_ca = body.get("servingCaCertificate") or ""
    if serving_ca and not _valid_pem_certificate(serving_ca):
        return json_error(400, "InvalidRequest", "servingCaCertificate must be PEM certificates")
    problem = _descriptive_field_problem(body)
    if problem:
        return json_error(400, "InvalidRequest", problem)
    previous = await state.registry.get(cluster_id(rg, name))
    cluster, created = await state.registry.put(Cluster(
        name=name,
        resource_group=rg,
        agent_public_key_certificate=body["agentPublicKeyCertificate"],
        location=body.get("location", ""),
        serving_ca_certificate=serving_ca,
        tls_server_name=body.get("tlsServerName", ""),
    ))
    log.info("cluster %s id=%s principal=%s", "registered" if created else "updated", cluster.id,
             principal.name)
    if previous is not None:
        await _on_credentials_changed(request, principal, previous, cluster)
    return web.json_response(cluster.to_json(), status=201 if created else 200)


def _fingerprint(pem: str) -> str:
    return fingerprint_sha256(pem.encode()) if pem else "-"


async def _on_credentials_changed(request: web.Request, principal: Principal, old: Cluster,
                                  new: Cluster) -> None:
    """Log a change of the agent key or serving CA (one line each, with both
    fingerprints) and end the agent sessions that proved the old key.

    Changing either is as strong as registering the cluster: the caller passed
    the same ``write`` check at the cluster's scope (onboarding or admin).
    """
    state = request.app[STATE]
    who = f"principal={principal.name!r} oid={principal.oid!r}"
    old_ca, new_ca = _fingerprint(old.serving_ca_certificate), _fingerprint(new.serving_ca_certificate)
    if old_ca != new_ca:
        log.warning("cluster serving CA changed id=%s %s old=%s new=%s", new.id, who, old_ca, new_ca)
    old_key = _fingerprint(old.agent_public_key_certificate)
    new_key = _fingerprint(new.agent_public_key_certificate)
    if old_key != new_key:
        ended = await end_sessions_of_old_key(state, new.id, new_key)
        log.warning("cluster agent key changed id=%s %s old=%s new=%s sessions_ended=%d",
                    new.id, who, old_key, new_key, ended)


@_handler
async def get_cluster(request: web.Request) -> web.Response:
    """GET /api/v1/resourceGroups/{rg}/clusters/{name}."""
    state = request.app[STATE]
    _, rg, name = await _cluster_caller(request, "read", "viewer or cluster-user")
    cluster = await state.registry.get(cluster_id(rg, name))
    if cluster is None:
        return json_error(404, "NotFound", f"cluster {rg}/{name} is not registered")
    return web.json_response(cluster.to_json())


@_handler
async def delete_cluster(request: web.Request) -> web.Response:
    """DELETE /api/v1/resourceGroups/{rg}/clusters/{name}; ends its agent session.

    ``?dryRun=true`` authorises and checks existence only (204, nothing
    deleted): ``arcctl delete`` asks it before touching the cluster, so a
    refused delete changes nothing anywhere.
    """
    state = request.app[STATE]
    principal, rg, name = await _cluster_caller(request, "delete", "onboarding")
    cid = cluster_id(rg, name)
    if request.query.get("dryRun") == "true":
        if await state.registry.get(cid) is None:
            return json_error(404, "NotFound", f"cluster {cid} is not registered")
        return web.Response(status=204)
    if not await state.registry.delete(cid):
        return json_error(404, "NotFound", f"cluster {cid} is not registered")
    if state.central_rbac is not None:  # a cluster registered again later starts without the mode
        await state.central_rbac.store.set_enabled(cid, False)
    session = state.directory.get(cid)
    if session is not None:
        state.directory.unregister(cid, session)
        await session.close()
    log.info("cluster deleted id=%s principal=%s", cid, principal.name)
    return web.Response(status=204)


@_handler
async def list_clusters(request: web.Request) -> web.Response:
    """GET /api/v1/clusters[?resourceGroup=RG]: the clusters the caller may read."""
    state = request.app[STATE]
    principal = await _principal(request)
    rg = request.query.get("resourceGroup")
    if rg is not None and not valid_name(rg):
        return json_error(400, "InvalidName", f"resource group {rg!r} is not a valid name")
    clusters = [
        c.to_json() for c in await state.registry.list(rg)
        if await state.may(principal, "read", cluster_scope(c.resource_group, c.name))
    ]
    return web.json_response({"value": clusters})


def _assignment_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not valid_assignment_id(value):
        raise _Abort(json_error(400, "InvalidName", "role assignment id must be 1-128 letters, digits, '.', '_' or '-'"))
    return value


@_handler
async def put_role_assignment(request: web.Request) -> web.Response:
    """PUT /api/v1/roleAssignments/{id}: admin at the assignment's scope."""
    state = request.app[STATE]
    principal = await _principal(request)
    aid = _assignment_id(request)
    body = await _json_body(request)
    errors = assignment_errors(body)
    if errors:
        return json_error(400, "InvalidRequest", "; ".join(errors))
    issuer = _assignee_issuer(state, body.get("principalIssuer", ""))
    if (body.get("principalType", "User") != "Group" and looks_like_name(body["principalId"])
            and not state.config.match_mutable_claims):
        # Stored, it could never match: say so now, not by silence later.
        return json_error(400, "InvalidRequest", name_assignment_error(body["principalId"]))
    await _require(request, principal, "manage_roles", body["scope"], "admin")
    existing = await state.roles.get(aid)
    if existing is not None:
        await _require(request, principal, "manage_roles", existing.scope, "admin")
    stored, created = await state.roles.put(RoleAssignment(
        aid, body["principalId"], body.get("principalType", "User"), body["role"], body["scope"],
        principal_issuer=issuer,
    ))
    log.info("role assignment %s id=%s role=%s scope=%s assignee_issuer=%s by=%s",
             "created" if created else "updated", aid, stored.role, stored.scope, stored.principal_issuer,
             principal.name)
    state.central_rbac_changed()
    if existing is not None:
        state.live_streams.wake()  # a replaced assignment may have taken a role away
    return web.json_response(stored.to_json(), status=201 if created else 200)


@_handler
async def get_role_assignment(request: web.Request) -> web.Response:
    """GET /api/v1/roleAssignments/{id}."""
    state = request.app[STATE]
    principal = await _principal(request)
    aid = _assignment_id(request)
    found = await state.roles.get(aid)
    if found is None or not await state.may(principal, "manage_roles", found.scope):
        # Without admin at its scope an assignment is indistinguishable from none.
        await _require(request, principal, "manage_roles", found.scope if found else "/", "admin")
        return json_error(404, "NotFound", f"role assignment {aid} does not exist")
    return web.json_response(found.to_json())


@_handler
async def delete_role_assignment(request: web.Request) -> web.Response:
    """DELETE /api/v1/roleAssignments/{id}."""
    state = request.app[STATE]
    principal = await _principal(request)
    aid = _assignment_id(request)
    found = await state.roles.get(aid)
    if found is None:
        await _require(request, principal, "manage_roles", "/", "admin")
        return json_error(404, "NotFound", f"role assignment {aid} does not exist")
    await _require(request, principal, "manage_roles", found.scope, "admin")
    await state.roles.delete(aid)
    state.central_rbac_changed()
    state.live_streams.wake()  # open streams of whoever held it are re-checked now
    log.info("role assignment deleted id=%s by=%s", aid, principal.name)
    return web.Response(status=204)


def _assignee_issuer(state: RelayState, value: Any) -> str:
    """The exact ``iss`` a request's ``principalIssuer`` names (URL or alias;
    absent: the only trusted issuer), or a 400: an assignment to an issuer the
    relay does not trust could never match."""
    issuers = state.config.issuers
    found = state.config.issuer_named(value) if isinstance(value, str) else None
    if found is not None:
        return found
    trusted = ", ".join(i.alias or i.issuer for i in issuers) or "none"
    if value == "" and issuers:
        message = (f"principalIssuer is required: this relay trusts {len(issuers)} issuers ({trusted}); "
                   "name the assignee's issuer by URL or alias")
    else:
        message = f"principalIssuer must name a trusted issuer by URL or alias (trusted: {trusted})"
    raise _Abort(json_error(400, "InvalidRequest", message))


async def _administers_any_scope(state: RelayState, principal: Principal) -> bool:
    ids = state.principal_ids(principal)
    if state.roles.is_bootstrap_admin(principal.issuer, ids):
        return True
    return any("manage_roles" in ROLES.get(a.role, ())
               for a in await state.roles.for_principals(principal.issuer, ids))


@_handler
async def list_role_assignments(request: web.Request) -> web.Response:
    """GET /api/v1/roleAssignments[?principalId=&principalIssuer=&scope=]: those the caller administers."""
    state = request.app[STATE]
    principal = await _principal(request)
    want_principal, want_scope = request.query.get("principalId"), request.query.get("scope")
    want_issuer = request.query.get("principalIssuer")
    if want_issuer is not None:
        want_issuer = _assignee_issuer(state, want_issuer)
    # A caller who administers nothing (or not the scope asked for) is told so,
    # not handed an empty list that reads as "there are no assignments".
    if want_scope is not None:
        if not valid_scope(want_scope):
            return json_error(400, "InvalidScope", "scope must be '/', '/resourceGroups/RG', "
                              "'/resourceGroups/RG/clusters/NAME' or '/resourceGroups/RG/clusters/NAME/namespaces/NS'")
        await _require(request, principal, "manage_roles", want_scope, "admin")
    elif not await _administers_any_scope(state, principal):
        state.metrics.auth_failures.labels("api", "forbidden").inc()
        log.info("api forbidden principal=%s issuer=%s action=manage_roles scope=any", principal.name,
                 principal.issuer)
        return json_error(403, "Forbidden", f"principal {principal.name} has no admin role at any scope; "
                          "listing role assignments needs admin at the scopes they are listed for")
    value = [
        a.to_json() for a in await state.roles.list_all()
        if await state.may(principal, "manage_roles", a.scope)
        and (want_principal is None or a.principal_id == want_principal)
        and (want_issuer is None or a.principal_issuer == want_issuer)
        and (want_scope is None or a.scope == want_scope)
    ]
    return web.json_response({"value": value})


def add_routes(app: web.Application) -> None:
    """Register the ``/api/v1`` routes on ``app``."""
    cluster = "/api/v1/resourceGroups/{rg}/clusters/{name}"
    assignment = "/api/v1/roleAssignments/{id}"
    app.router.add_put(cluster, put_cluster)
    app.router.add_get(cluster, get_cluster, allow_head=False)
    app.router.add_delete(cluster, delete_cluster)
    app.router.add_get("/api/v1/clusters", list_clusters, allow_head=False)
    app.router.add_put(assignment, put_role_assignment)
    app.router.add_get(assignment, get_role_assignment, allow_head=False)
    app.router.add_delete(assignment, delete_role_assignment)
    app.router.add_get("/api/v1/roleAssignments", list_role_assignments, allow_head=False)


__all__ = ["add_routes"]
