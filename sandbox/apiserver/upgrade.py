"""exec / attach / portforward: after authentication and authorization the
connection is handed to ``sandbox.streaming.serve_upgrade`` (another package,
contract in docs/INTERFACES.md §2), which writes the 101 or an error itself.

Authorization (done by the caller, app.py): a SPDY ``POST`` is verb ``create``
on ``pods/exec|attach|portforward``; a websocket ``GET`` is verb ``get`` (the
RequestInfo mapping of the method), and from Kubernetes 1.35 also ``create``
(feature gate AuthorizePodWebsocketUpgradeCreatePermission, beta and on by
default in 1.35, kubernetes/kubernetes#134577). So for the 1.27-1.34 versions
the sandbox reports, ``get`` alone admits a websocket exec, as upstream.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sandbox.apiserver import status as st
from sandbox.apiserver.authn import UserInfo
from sandbox.apiserver.http import Request, Response
from sandbox.apiserver.resources import lookup
from sandbox.apiserver.routing import RequestInfo

if TYPE_CHECKING:
    from sandbox.apiserver.app import App

log = logging.getLogger("sandbox.apiserver")
STREAMING_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})
PODS = lookup("", "v1", "pods")


async def serve_streaming(app: App, req: Request, info: RequestInfo, user: UserInfo) -> Response | None:
    """Hand an upgrade request over; returns None once the handler is done
    with the connection (the caller then closes it).

    Raises:
        ApiError: 404 for a missing pod, 400 without an Upgrade header, 503
            when the streaming package is not available.
    """
    assert PODS is not None
    app.store.get(PODS, info.namespace, info.name)
    if not req.is_upgrade:
        raise st.bad_request("Upgrade request required")
    try:
        from sandbox.streaming import UpgradeRequest, serve_upgrade
    except ImportError:
        raise st.ApiError("ServiceUnavailable", "streaming subresources are not available in this sandbox build",
                          code=503) from None
    runtime = app.controllers.runtime_for(info.namespace, info.name)
    ureq = UpgradeRequest(method=req.method, path=req.path, query=list(req.query_list), headers=list(req.headers),
                          reader=req.reader, writer=req.writer, user=user.name)
    try:
        await serve_upgrade(info.subresource, ureq, runtime)
    except Exception:
        log.exception("event=upgrade_failed kind=%s pod=%s/%s", info.subresource, info.namespace, info.name)
    return None
