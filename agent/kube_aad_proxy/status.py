"""Kubernetes ``Status`` error responses, the form kubectl prints."""

from __future__ import annotations

import json

_REASONS = {
    400: ("Bad Request", "BadRequest"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "Forbidden"),
    408: ("Request Timeout", "Timeout"),
    431: ("Request Header Fields Too Large", "BadRequest"),
    500: ("Internal Server Error", "InternalError"),
    502: ("Bad Gateway", "ServiceUnavailable"),
}


def status_response(code: int, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying a ``v1.Status`` body; the
    connection is closed after it (``Connection: close``)."""
    phrase, reason = _REASONS.get(code, ("Error", "Unknown"))
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"HTTP/1.1 {code} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        "Cache-Control: no-cache, private\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body
