"""Dial a tunnel websocket on the native transport (aio_ws_native.py).

TCP to the relay, or through an HTTP forward proxy with ``CONNECT`` (an
``http://`` or, over TLS, ``https://`` proxy URL; it may carry
``user:password@``, sent as Basic ``Proxy-Authorization``);
then TLS with the caller's ``ssl.SSLContext`` (the relay CA, plus a
TLS-inspecting proxy's CA when one is configured: the caller builds it), then
the HTTP/1.1 upgrade with subprotocol ``arc-tunnel.v1`` and the caller's
headers. Which proxy to use (``HTTPS_PROXY``, ``NO_PROXY`` with CIDRs) is the
caller's decision, as with aiohttp; this module only dials.

Errors: a refused upgrade raises ``WebSocketHandshakeRefused`` (status and
headers, for ``Retry-After``); a proxy refusing ``CONNECT`` raises
``ProxyRefused`` (an ``OSError``); socket and TLS failures propagate as the
``OSError``/``ssl.SSLError`` asyncio raised.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tunnel import SUBPROTOCOL
from tunnel.aio_config import TunnelConfig, ws_connect_kwargs
from tunnel.aio_ws_native import NativeWebSocket

__all__ = [
    "ProxyRefused",
    "WebSocketHandshakeRefused",
    "accept_key",
    "dial_websocket",
    "open_tunnel_websocket",
    "parse_head",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A name with IPv6 and IPv4 addresses: try the next address after this long
# (RFC 8305's recommended 250 ms, aiohttp's default too) rather than only
# after the first attempt fails.
HAPPY_EYEBALLS_DELAY = 0.25


class WebSocketHandshakeRefused(Exception):
    """The server answered the upgrade with something other than 101.

    Attributes:
        status: The HTTP status (0 when the answer was not a valid 101).
        headers: The response headers (case-insensitive).
    """

    def __init__(self, status: int, headers: CIMultiDict[str], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class ProxyRefused(OSError):
    """The HTTP proxy did not open the tunnel (its ``CONNECT`` answer was not 2xx)."""


def parse_head(head: bytes) -> tuple[str, CIMultiDict[str]]:
    """The start line and the headers of an HTTP/1.1 head.

    Raises:
        ValueError: Not an HTTP head.
    """
    lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line[:40]!r}")
        headers.add(name, value.strip())
    return lines[0], headers


def _status(start_line: str) -> int:
    parts = start_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {start_line[:60]!r}")
    return int(parts[1])


def accept_key(key: bytes) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()


def _host_header(host: str, port: int, default_port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"


async def _connect_through_proxy(
    proxy: str, host: str, port: int, make: NativeWebSocket, context: ssl.SSLContext | None
) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    parts = urlsplit(proxy)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProxyRefused(f"proxy URL {proxy!r} not supported: use http://host:port or https://host:port")
    # An https:// proxy is reached over TLS (trusting what the relay's context
    # trusts: the caller adds the proxy's CA there), and the relay's TLS runs
    # inside that (TLS in TLS), as aiohttp does.
    proxy_tls = (context or ssl.create_default_context()) if parts.scheme == "https" else None
    proxy_port = parts.port or (443 if proxy_tls else 80)
    transport, _ = await loop.create_connection(
        lambda: make, parts.hostname, proxy_port, ssl=proxy_tls,
        server_hostname=parts.hostname if proxy_tls else None, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
    target = _host_header(host, port, 0)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(secret).decode())
    make.write_raw(("\r\n".join(lines) + "\r\n\r\n").encode())
    start_line, _ = parse_head(await make.read_head())
    status = _status(start_line)
    if not 200 <= status < 300:
        raise ProxyRefused(f"proxy {parts.hostname}:{proxy_port} refused CONNECT {target} ({start_line})")
    return transport


async def dial_websocket(
    url: str,
    *,
    headers: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
    proxy: str | None = None,
    config: TunnelConfig | None = None,
) -> NativeWebSocket:
    """Open a tunnel websocket to ``url`` (``wss://`` or ``ws://``).

    Args:
        url: The websocket URL.
        headers: Extra request headers (``Authorization``...).
        ssl_context: TLS trust for ``wss://`` (None: the system's defaults).
        proxy: An ``http(s)://[user:password@]host:port`` forward proxy, or None.
        config: For the message size cap (default ``TunnelConfig()``).

    Returns:
        The connected websocket, subprotocol checked; hand it to ``TunnelSession``.

    Raises:
        WebSocketHandshakeRefused, ProxyRefused, OSError, ssl.SSLError.
    """
    config = config or TunnelConfig()
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a websocket URL: {url!r}")
    tls = parts.scheme == "wss"
    host = parts.hostname
    default_port = 443 if tls else 80
    port = parts.port or default_port
    loop = asyncio.get_running_loop()
    ws = NativeWebSocket(is_client=True, max_message_size=config.max_message_size)
    context = (ssl_context or ssl.create_default_context()) if tls else None
    transport: asyncio.Transport | None = None
    try:
        if proxy:
            transport = await _connect_through_proxy(proxy, host, port, ws, context)
            if context is not None:
                tls_transport = await loop.start_tls(transport, ws, context, server_hostname=host)
                assert tls_transport is not None
                transport = tls_transport
                ws.replace_transport(transport)
        else:
            transport, _ = await loop.create_connection(
                lambda: ws, host, port, ssl=context, server_hostname=host if tls else None,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
        key = base64.b64encode(os.urandom(16))
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = [
            f"GET {path} HTTP/1.1",
            f"Host: {_host_header(host, port, default_port)}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}",
        ]
        request += [f"{name}: {value}" for name, value in headers.items()]
        ws.write_raw(("\r\n".join(request) + "\r\n\r\n").encode())
        start_line, answer = parse_head(await ws.read_head())
        status = _status(start_line)
        if status != 101:
            raise WebSocketHandshakeRefused(status, answer, f"websocket upgrade refused: {start_line}")
        if (answer.get("Upgrade", "").lower() != "websocket"
                or "upgrade" not in answer.get("Connection", "").lower()
                or answer.get("Sec-WebSocket-Accept") != accept_key(key)):
            raise WebSocketHandshakeRefused(0, answer, "invalid websocket upgrade answer")
        if "Sec-WebSocket-Extensions" in answer:
            raise WebSocketHandshakeRefused(0, answer, "server chose an extension that was not offered")
        subprotocol = answer.get("Sec-WebSocket-Protocol")
        if subprotocol is not None and subprotocol != SUBPROTOCOL:
            raise WebSocketHandshakeRefused(0, answer, f"server chose subprotocol {subprotocol!r}")
        ws.start_websocket(subprotocol)
        return ws
    except BaseException:
        if transport is not None:
            transport.abort()
        raise


async def open_tunnel_websocket(
    http: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
    proxy: str | None,
    config: TunnelConfig,
) -> NativeWebSocket | aiohttp.ClientWebSocketResponse:
    """The one dial of the agent and arc-proxy, on the transport
    ``config.transport`` names; hand the result to ``TunnelSession``.

    Both transports fail the same way for the caller: a refused upgrade is
    ``aiohttp.WSServerHandshakeError`` (status, headers), anything else an
    ``OSError``/``ssl.SSLError`` (native) or ``aiohttp.ClientError``.

    Args:
        http: The aiohttp session (used by the ``aiohttp`` transport only).
        url: ``wss://...`` (or ``ws://``).
        headers: Request headers (``Authorization``).
        ssl_context: TLS trust for the relay (None: the session's connector's).
        proxy: Forward proxy URL, or None for a direct connection.
        config: The tunnel configuration; ``transport`` picks the implementation.
    """
    if config.transport != "native":
        kwargs = ws_connect_kwargs(config)
        if ssl_context is not None:
            kwargs["ssl"] = ssl_context
        ws: aiohttp.ClientWebSocketResponse = await http.ws_connect(
            url, headers=dict(headers), proxy=proxy, **kwargs)
        return ws
    try:
        return await dial_websocket(url, headers=headers, ssl_context=ssl_context, proxy=proxy, config=config)
    except WebSocketHandshakeRefused as refused:
        # The request's headers (the token) stay out of the error.
        info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
        raise aiohttp.WSServerHandshakeError(
            info, (), status=refused.status, message=str(refused), headers=refused.headers
        ) from None
