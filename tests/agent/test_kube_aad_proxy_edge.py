"""kube-aad-proxy's slow-loris guards over real TLS on loopback: a silent
connection after TLS, a partial head (also one trickled byte by byte), a
partial upgrade head, a connection that never starts TLS, and the bound on
connections held before their first head -- each closed within its bound
while a legitimate client is served."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator

import pytest

from agent.kube_aad_proxy.config import KubeAadProxyConfig
from agent.kube_aad_proxy.proxy import KubeAadProxy
from tests.support.kube_aad_proxy import TIMEOUT, RecordingUpstream, connect, get, read_response
from tests.support.pki import Pki
from tests.support.waits import until

SHORT = 0.5  # seconds: head and handshake timeouts of the proxy under test



async def start_proxy(pki: Pki, upstream: RecordingUpstream, **limits: float) -> KubeAadProxy:
    config = KubeAadProxyConfig(upstream_url=upstream.url, upstream_ca_pem=pki.ca.certificate_pem,
                                serving_cert=pki.proxy_cert, **limits)  # type: ignore[arg-type]
    proxy = KubeAadProxy(config)
    await proxy.start("127.0.0.1", 0)
    return proxy


@pytest.fixture
async def proxy(pki: Pki, upstream: RecordingUpstream) -> AsyncIterator[KubeAadProxy]:
    """A proxy with short head and handshake timeouts."""
    p = await start_proxy(pki, upstream, head_timeout=SHORT, tls_handshake_timeout=SHORT)
    yield p
    await p.stop()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sent until it closed (bounded by TIMEOUT)."""
    received = b""
    async with asyncio.timeout(TIMEOUT):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass  # closed without close_notify: still closed
    return received


async def served(pki: Pki, proxy: KubeAadProxy) -> bool:
    """A legitimate request on a new connection is answered."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/ok"))
    ok = (await read_response(r)).status == 200
    w.close()
    return ok


async def test_proxy_closes_connection_silent_after_tls(pki: Pki, proxy: KubeAadProxy) -> None:
    """A TLS session that never sends a request is answered 408 and closed after head_timeout."""
    r, w = await connect(pki, proxy.port)
    assert await served(pki, proxy)
    answer = await until_closed(r)
    assert answer.startswith(b"HTTP/1.1 408")
    w.close()


async def test_proxy_closes_partial_head(pki: Pki, proxy: KubeAadProxy) -> None:
    """A head that never ends is closed after head_timeout."""
    r, w = await connect(pki, proxy.port)
    w.write(b"GET /api HTTP/1.1\r\nHost: k\r\n")
    assert await served(pki, proxy)
    assert (await until_closed(r)).startswith(b"HTTP/1.1 408")
    w.close()


async def test_proxy_closes_head_trickled_byte_by_byte(pki: Pki, proxy: KubeAadProxy) -> None:
    """Bytes that keep arriving do not extend the head timeout: it counts from
    the start of the head."""
    r, w = await connect(pki, proxy.port)
    closed = asyncio.ensure_future(until_closed(r))
    async with asyncio.timeout(TIMEOUT):
        for byte in b"GET /api HTTP/1.1\r\nHost: k\r\nX-Slow: " + b"a" * 10_000:
            if closed.done():
                break
            w.write(bytes([byte]))
            await asyncio.sleep(0.02)  # a trickle, well under head_timeout between bytes
    assert (await closed).startswith(b"HTTP/1.1 408")
    w.close()


async def test_proxy_closes_partial_upgrade_head(pki: Pki, proxy: KubeAadProxy) -> None:
    """An exec-style upgrade head that never ends is closed after head_timeout."""
    r, w = await connect(pki, proxy.port)
    w.write(b"POST /api/v1/namespaces/x/pods/y/exec HTTP/1.1\r\nHost: k\r\n"
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n")
    assert await served(pki, proxy)
    assert (await until_closed(r)).startswith(b"HTTP/1.1 408")
    w.close()


async def test_proxy_closes_connection_that_never_starts_tls(pki: Pki, proxy: KubeAadProxy) -> None:
    """A TCP connection that never sends a ClientHello is closed after the TLS handshake timeout."""
    r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await served(pki, proxy)
    assert await until_closed(r) == b""
    w.close()
    await until(lambda: proxy.preauth_connections == 0, "no connection before its head")


async def test_proxy_refuses_connections_beyond_preauth_limit(
        pki: Pki, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture) -> None:
    """Beyond max_preauth_connections new connections are closed at once (one
    log line per burst); a connection past its first head no longer counts."""
    p = await start_proxy(pki, upstream, max_preauth_connections=3, head_timeout=TIMEOUT,
                          tls_handshake_timeout=TIMEOUT)
    try:
        kept_r, kept_w = await connect(pki, p.port)
        kept_w.write(get("/ok"))
        assert (await read_response(kept_r)).status == 200  # past its head: not counted
        silent = [await connect(pki, p.port) for _ in range(2)]
        bare = await asyncio.open_connection("127.0.0.1", p.port)  # not even TLS
        await until(lambda: p.preauth_connections == 3, "3 connections before their head")
        caplog.set_level(logging.INFO, logger="agent.kube_aad_proxy")
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", p.port)
            assert await until_closed(r) == b""
            w.close()
        assert p.preauth.refused == 3
        assert sum("refusing new connections" in rec.getMessage() for rec in caplog.records) == 1
        # The kept-alive client is served meanwhile.
        kept_w.write(get("/ok"))
        assert (await read_response(kept_r)).status == 200
        for _, w in [*silent, bare]:
            w.close()
        await until(lambda: p.preauth_connections == 0, "no connection before its head")
        assert await served(pki, p)
        kept_w.close()
    finally:
        await p.stop()
