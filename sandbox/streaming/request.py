"""The hand-off from the HTTP layer to a streaming subresource."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class UpgradeRequest:
    """A request for exec/attach/portforward, after authentication and
    authorization, before any response byte is written.

    The handler owns the connection from here: it writes the 101 (or an error
    response with a Kubernetes Status body) and the caller closes the
    connection when the handler returns.
    """

    method: str  # "GET" (websocket) or "POST" (SPDY/3.1)
    path: str  # e.g. /api/v1/namespaces/default/pods/p/exec
    query: list[tuple[str, str]]  # decoded, in order, repeated keys kept (command=...)
    headers: list[tuple[str, str]]  # names lower-cased, in order, repeats kept
    reader: asyncio.StreamReader  # positioned right after the request head
    writer: asyncio.StreamWriter
    user: str  # the authenticated user name, for logs

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def query_values(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]
