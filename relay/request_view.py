"""What the websocket endpoints' handshakes read of a request, and what they
answer when they refuse, whatever transport carries the websocket.

The relay serves its two connect paths either through aiohttp (a
``web.Request``) or on the native websocket (``listener.transport: native``:
relay/native_upgrade.py takes the connection over before aiohttp sees it).
Authentication, admission, refusals and their log lines are written once,
against :class:`RequestView`, and a refusal is an :class:`ErrorAnswer`, so
both transports answer with the same status, headers and body and log the
same line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping

from tunnel.aio import UpgradeRequest


@dataclass(frozen=True)
class RequestView:
    """One upgrade request, transport aside.

    Args:
        path: The path, without the query.
        query: The query's parameters.
        headers: The request headers (case-insensitive).
        remote: The peer's address (host only, as aiohttp's ``request.remote``).
        transport: The connection (its ``get_extra_info`` has the TLS details).
    """

    path: str
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]
    remote: str | None
    transport: asyncio.BaseTransport | None

    @classmethod
    def of_aiohttp(cls, request: web.Request) -> RequestView:
        """The view of an aiohttp request."""
        return cls(request.path, request.query, request.headers, request.remote, request.transport)

    @classmethod
    def of_upgrade(cls, request: UpgradeRequest, transport: asyncio.BaseTransport) -> RequestView:
        """The view of a native upgrade request read from ``transport``."""
        target = urlsplit(request.path)
        peer = transport.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        return cls(target.path, MultiDictProxy(MultiDict(parse_qsl(target.query, keep_blank_values=True))),
                   CIMultiDictProxy(CIMultiDict(request.headers)), remote, transport)


@dataclass(frozen=True)
class ErrorAnswer:
    """A refusal ``{"error": {"code", "message"}}`` with ``status`` and extra
    ``headers``, sent as an aiohttp response or written raw."""

    status: int
    code: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        """The JSON body (what ``web.json_response`` writes)."""
        return json.dumps({"error": {"code": self.code, "message": self.message}}).encode()

    def response(self) -> web.Response:
        """The answer as an aiohttp response."""
        return web.json_response({"error": {"code": self.code, "message": self.message}},
                                 status=self.status, headers=dict(self.headers) or None)

    def raw_headers(self) -> dict[str, str]:
        """The headers written on the native transport besides the length."""
        return {"Content-Type": "application/json; charset=utf-8", **self.headers}
