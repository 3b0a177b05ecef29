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

from aiohttp import http_exceptions, web

__all__ = ["ParserErrorFilter", "install_parser_error_filter", "unexpected_error_middleware"]

log = logging.getLogger("relay")
# aiohttp's server logger (documented name); it logs a malformed request with
# its traceback at ERROR.
AIOHTTP_SERVER_LOGGER = "aiohttp.server"

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


class ParserErrorFilter(logging.Filter):
    """Replaces aiohttp's ERROR-with-traceback for a malformed request (bad
    request line, header over 8 KiB, invalid header...) by one INFO line of
    the relay naming the error type. aiohttp has already answered 400; the
    exception text is not logged because it quotes the peer's bytes (a bearer
    token, for a too-long Authorization header)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, http_exceptions.HttpProcessingError):
            log.info("http request refused by the parser status=%s error=%s", exc.code or 400,
                     type(exc).__name__)
            return False
        return True


_PARSER_ERROR_FILTER = ParserErrorFilter()


def install_parser_error_filter() -> None:
    """Attach :class:`ParserErrorFilter` to aiohttp's server logger (idempotent)."""
    logging.getLogger(AIOHTTP_SERVER_LOGGER).addFilter(_PARSER_ERROR_FILTER)
