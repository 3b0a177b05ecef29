"""The last line of defence for every relay handler: an exception no handler
expected becomes a 500 with a request id, and one ERROR line naming the
exception type and that id. The traceback is logged only at DEBUG, so a peer
that finds a bug cannot fill the operator's log with tracebacks, and the
response never carries exception text.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["unexpected_error_middleware"]

log = logging.getLogger("relay")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def unexpected_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn an unexpected exception of ``handler`` into a 500 (see module doc)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # aiohttp's own answers (404, 405, 413...) are expected
    except Exception as exc:
        request_id = secrets.token_hex(8)
        log.error("unexpected error request_id=%s method=%s path=%r error=%s", request_id,
                  request.method, request.rel_url.raw_path[:200], type(exc).__name__)
        log.debug("traceback of request_id=%s", request_id, exc_info=True)
        if request.headers.get("Upgrade") and request.transport is not None:
            # A websocket may already be running on this connection: no HTTP
            # answer can follow, so end the connection instead.
            request.transport.abort()
        return web.json_response(
            {"error": {"code": "InternalError",
                       "message": f"internal error; quote request id {request_id} to the operator"}},
            status=500, headers={"X-Request-Id": request_id},
        )
