"""``/api/v1/resourceGroups/{rg}/clusters/{name}/centralRbac``: switch central
Kubernetes roles on or off for one cluster (issue 18; ``arcctl connect
--enable-central-rbac``, ``arcctl update --central-rbac on|off``).

``PUT`` with ``{"enabled": true|false}`` needs the onboarding (or admin) role
on the cluster, as registering it does; it is idempotent and answers
``{"enabled", "changed"}``. ``GET`` needs any role that shows the cluster.
The cluster's agent hears of the change at once (relay/central_rbac_feed.py):
on, it reconciles the central roles' objects; off, it removes them all.
"""

from __future__ import annotations

import logging

from aiohttp import web

from relay.central_rbac_feed import CentralRbacFeed
from relay.management_api import _cluster_caller, _handler, _json_body
from relay.registry import cluster_id
from relay.state import STATE, json_error

log = logging.getLogger("relay")

PATH = "/api/v1/resourceGroups/{rg}/clusters/{name}/centralRbac"


def _feed(request: web.Request) -> CentralRbacFeed:
    feed = request.app[STATE].central_rbac
    assert feed is not None, "central_rbac_api routes are added only with a feed"
    return feed


@_handler
async def put_central_rbac(request: web.Request) -> web.Response:
    """PUT: ``{"enabled": bool}``; onboarding at the cluster's scope."""
    state = request.app[STATE]
    principal, rg, name = await _cluster_caller(request, "write", "onboarding")
    body = await _json_body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool) or set(body) - {"enabled"}:
        return json_error(400, "InvalidRequest", 'the body must be {"enabled": true} or {"enabled": false}')
    cid = cluster_id(rg, name)
    if await state.registry.get(cid) is None:
        return json_error(404, "NotFound", f"cluster {cid} is not registered: register it first (arcctl connect)")
    feed = _feed(request)
    changed = await feed.store.set_enabled(cid, enabled)
    feed.wake()
    log.info("central rbac %s cluster=%s changed=%s by=%s", "enabled" if enabled else "disabled", cid,
             changed, principal.name)
    return web.json_response({"enabled": enabled, "changed": changed})


@_handler
async def get_central_rbac(request: web.Request) -> web.Response:
    """GET: ``{"enabled": bool}``; read at the cluster's scope."""
    _, rg, name = await _cluster_caller(request, "read", "viewer")
    cid = cluster_id(rg, name)
    if await request.app[STATE].registry.get(cid) is None:
        return json_error(404, "NotFound", f"cluster {cid} is not registered")
    return web.json_response({"enabled": cid in await _feed(request).store.enabled_clusters()})


def add_routes(app: web.Application) -> None:
    """Register the ``centralRbac`` routes on ``app``."""
    app.router.add_put(PATH, put_central_rbac)
    app.router.add_get(PATH, get_central_rbac, allow_head=False)


__all__ = ["add_routes"]
