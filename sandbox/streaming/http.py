"""HTTP/1.1 responses written straight to the upgraded connection: the 101s
and the Kubernetes ``Status`` error replies."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from typing import Any

from sandbox.streaming.request import UpgradeRequest

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error"}
_STATUS_REASON = {400: "BadRequest", 403: "Forbidden", 404: "NotFound",
                  500: "InternalError"}


def status_failure(code: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """A ``metav1.Status`` failure object."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason or _STATUS_REASON.get(code, "BadRequest"),
            "code": code}


async def write_error(req: UpgradeRequest, code: int, message: str,
                      headers: list[tuple[str, str]] | None = None) -> None:
    """Reply with an error Status instead of upgrading."""
    body = json.dumps(status_failure(code, message)).encode()
    head = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}",
            "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers or []]
    req.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    with contextlib.suppress(ConnectionError, OSError):
        await req.writer.drain()


async def write_switching(req: UpgradeRequest, headers: list[tuple[str, str]]) -> None:
    """The 101 Switching Protocols head."""
    head = ["HTTP/1.1 101 Switching Protocols", *(f"{k}: {v}" for k, v in headers)]
    req.writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    await req.writer.drain()


def websocket_accept(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def header_tokens(req: UpgradeRequest, name: str) -> list[str]:
    """All comma-separated tokens of a (repeatable) header, in order."""
    return [t.strip() for v in req.header_values(name) for t in v.split(",") if t.strip()]
