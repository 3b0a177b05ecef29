"""kube-aad-proxy over real TLS sockets against a recording upstream."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator

import pytest

from agent import KubeAadProxy, KubeAadProxyConfig
from tests.support.kube_aad_proxy import (
    TIMEOUT,
    RecordingUpstream,
    connect,
    get,
    pattern,
    read_response,
    status_of,
)
from tests.support.pki import Pki
from tests.support.waits import until

pytestmark = pytest.mark.timeout(60)



@pytest.fixture
async def proxy(pki: Pki, upstream: RecordingUpstream) -> AsyncIterator[KubeAadProxy]:
    p = KubeAadProxy(
        KubeAadProxyConfig(upstream_url=upstream.url, upstream_ca_pem=pki.ca.certificate_pem, serving_cert=pki.proxy_cert)
    )
    await p.start("127.0.0.1", 0)
    yield p
    await p.stop()


async def test_proxy_passes_get_with_token_untouched(pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy) -> None:
    """A GET with a service-account token reaches the upstream byte for byte."""
    r, w = await connect(pki, proxy.port)
    req = get("/api/v1/namespaces/default/pods?limit=5", "Authorization: Bearer sa-token-abc", "Accept: application/json")
    w.write(req)
    resp = await read_response(r)
    assert resp.status == 200
    assert upstream.received[0].raw_head == req
    assert w.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    w.close()


async def test_proxy_strips_client_impersonation_headers(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """Impersonate-User/-Group/-Uid/-Extra-* in any case never reach the upstream."""
    r, w = await connect(pki, proxy.port)
    w.write(get(
        "/api/v1/pods", "Authorization: Bearer sa-token", "Impersonate-User: admin", "impersonate-group: system:masters",
        "IMPERSONATE-UID: 0", "Impersonate-Extra-Foo: bar", "iMpErSoNaTe-ExTrA-scopes: x", "X-Keep: yes",
    ))
    assert (await read_response(r)).status == 200
    got = upstream.received[0]
    assert not [n for n, _ in got.headers if n.lower().startswith("impersonate-")]
    assert got.values("authorization") == ["Bearer sa-token"]
    assert got.values("x-keep") == ["yes"]
    w.close()


async def test_proxy_refuses_two_authorization_headers(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """Two Authorization headers get a 400 Status and nothing reaches the upstream."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/api/v1/pods", "Authorization: Bearer a", "authorization: Bearer b"))
    resp = await read_response(r)
    assert resp.status == 400
    assert status_of(resp)["code"] == 400
    assert await asyncio.wait_for(r.read(), TIMEOUT) == b""  # closed after the refusal
    assert upstream.received == []
    assert upstream.connections == 0


async def test_proxy_answers_malformed_head_with_400(pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy) -> None:
    """A smuggling-shaped head (Content-Length and chunked) is refused, not forwarded."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/x", "Content-Length: 5", "Transfer-Encoding: chunked"))
    resp = await read_response(r)
    assert resp.status == 400
    assert upstream.received == []


async def test_proxy_streams_chunked_watch_incrementally(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """Each watch event arrives while the chunked response is still open."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/watch?watch=1"))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert b"chunked" in head.lower()
    for i in range(3):
        event = b'{"type":"ADDED","n":%d}\n' % i
        await upstream.watch_events.put(event)
        chunk = await asyncio.wait_for(r.readuntil(b"\r\n" + event + b"\r\n"), TIMEOUT)
        assert chunk.endswith(event + b"\r\n")
    await upstream.watch_events.put(None)
    assert await asyncio.wait_for(r.readuntil(b"0\r\n\r\n"), TIMEOUT) == b"0\r\n\r\n"
    # the connection is still usable afterwards
    w.write(get("/after"))
    assert (await read_response(r)).status == 200
    w.close()


async def test_proxy_relays_10mb_bodies_byte_exact(pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy) -> None:
    """A 10 MB request body and a 10 MB response arrive byte for byte."""
    n = 10 * 1024 * 1024
    body = pattern(n, b"req")
    r, w = await connect(pki, proxy.port)
    w.write(get("/echo", f"Content-Length: {n}", method="POST"))
    w.write(body)
    resp = await read_response(r)
    assert resp.status == 200 and hashlib.sha256(resp.body).digest() == hashlib.sha256(body).digest()
    assert upstream.received[0].body_len == n
    w.write(get(f"/big?n={n}"))
    resp = await read_response(r)
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(pattern(n, b"big")).digest()
    w.close()


async def test_proxy_forwards_chunked_request_body_raw(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """A chunked request body (with an extension and a trailer) is framed correctly."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/echo", "Transfer-Encoding: chunked", method="POST"))
    w.write(b"5;ext=1\r\nhello\r\n")
    await asyncio.sleep(0.05)  # split across reads on purpose
    w.write(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    w.write(get("/next"))
    assert (await read_response(r)).body == b"hello world"
    assert (await read_response(r)).status == 200
    assert [x.path for x in upstream.received] == ["/echo", "/next"]
    w.close()


async def test_proxy_keeps_pipelined_requests_in_order(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """Pipelined requests on one keep-alive connection get their responses in order."""
    r, w = await connect(pki, proxy.port)
    w.write(b"".join(get(f"/p/{i}") for i in range(20)) + get("/h", method="HEAD") + get("/last"))
    for i in range(20):
        resp = await read_response(r)
        assert resp.body == b'{"method": "GET", "path": "/p/%d"}' % i
    head = await read_response(r, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert (await read_response(r)).body.endswith(b'"/last"}')
    assert upstream.connections == 1
    w.close()


async def test_proxy_splices_websocket_upgrade(pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy) -> None:
    """After a 101, raw bytes flow both ways (exec-style subprotocol request)."""
    r, w = await connect(pki, proxy.port)
    w.write(get(
        "/ws", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io",
    ))
    resp = await read_response(r)
    assert resp.status == 101
    assert await asyncio.wait_for(r.readexactly(len(b"hello-from-upstream")), TIMEOUT) == b"hello-from-upstream"
    w.write(b"\x00raw\xffbytes GET / HTTP/1.1\r\n\r\n")
    echoed = await asyncio.wait_for(r.readexactly(len(b"echo:\x00raw\xffbytes GET / HTTP/1.1\r\n\r\n")), TIMEOUT)
    assert echoed == b"echo:\x00raw\xffbytes GET / HTTP/1.1\r\n\r\n"
    assert len(upstream.received) == 1  # the bytes after the upgrade were not parsed as a request
    w.close()


async def test_proxy_closes_after_failed_upgrade(pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy) -> None:
    """A non-101 answer to an upgrade is relayed, then the connection closes;
    a request pipelined behind it never reaches the upstream."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/ws?fail=1", "Connection: Upgrade", "Upgrade: websocket") + get("/smuggled"))
    resp = await read_response(r)
    assert resp.status == 403
    assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
    assert [x.path for x in upstream.received] == ["/ws?fail=1"]


async def test_proxy_reopens_upstream_after_connection_close(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """A response with Connection: close ends the client connection too; a new one works."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/close"))
    assert (await read_response(r)).status == 200
    assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
    r, w = await connect(pki, proxy.port)
    w.write(get("/again"))
    assert (await read_response(r)).status == 200
    w.close()


async def test_proxy_answers_502_when_upstream_unreachable(pki: Pki) -> None:
    """No API server: a 502 Status with a one-line reason."""
    up = RecordingUpstream(pki)
    await up.start()
    url = up.url
    await up.stop()
    await asyncio.sleep(0)
    p = KubeAadProxy(KubeAadProxyConfig(upstream_url=url, upstream_ca_pem=pki.ca.certificate_pem, serving_cert=pki.proxy_cert))
    await p.start()
    try:
        r, w = await connect(pki, p.port)
        w.write(get("/api"))
        resp = await read_response(r)
        assert resp.status == 502
        msg = str(status_of(resp)["message"])
        assert "cannot reach the API server" in msg and "\n" not in msg
    finally:
        await p.stop()


async def test_proxy_answers_502_when_upstream_cert_untrusted(pki: Pki, upstream: RecordingUpstream) -> None:
    """An upstream whose certificate does not chain to upstream_ca_pem is refused (502)."""
    other = Pki.create()
    p = KubeAadProxy(KubeAadProxyConfig(upstream_url=upstream.url, upstream_ca_pem=other.ca.certificate_pem, serving_cert=pki.proxy_cert))
    await p.start()
    try:
        r, w = await connect(pki, p.port)
        w.write(get("/api"))
        resp = await read_response(r)
        assert resp.status == 502 and "TLS" in str(status_of(resp)["message"])
        assert upstream.received == []
    finally:
        await p.stop()


async def test_proxy_writes_audit_line_without_token(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """One audit line per request with principal, verb, path, status; never the token."""
    caplog.set_level(logging.INFO, logger="agent.audit")
    r, w = await connect(pki, proxy.port)
    w.write(get("/api/v1/pods?secret=q", "Authorization: Bearer sa-token-SECRET"))
    await read_response(r)
    w.close()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "agent.audit"]
    assert len(lines) == 1
    assert "principal=passthrough" in lines[0] and "verb=GET" in lines[0]
    assert "path=/api/v1/pods " in lines[0] and "status=200" in lines[0]
    assert "SECRET" not in caplog.text


async def test_proxy_refuses_bad_config() -> None:
    """An http:// upstream or a path in the URL is a configuration error."""
    pki = Pki.create()
    with pytest.raises(ValueError):
        KubeAadProxyConfig(upstream_url="http://x:1", upstream_ca_pem=b"", serving_cert=pki.proxy_cert)
    with pytest.raises(ValueError):
        KubeAadProxyConfig(upstream_url="https://x:1/prefix", upstream_ca_pem=b"", serving_cert=pki.proxy_cert)


async def test_proxy_sends_refusal_after_earlier_pipelined_responses(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """A refused request behind a good one: the good response first, then 400, then close."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/first") + get("/bad", "Authorization: Bearer a", "Authorization: Bearer b") + get("/never"))
    assert (await read_response(r)).body.endswith(b'"/first"}')
    assert (await read_response(r)).status == 400
    assert await asyncio.wait_for(r.read(), TIMEOUT) == b""
    assert [x.path for x in upstream.received] == ["/first"]


async def test_proxy_relays_100_continue(pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy) -> None:
    """Expect: 100-continue gets the upstream's 100 before the body is sent."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/echo", "Content-Length: 4", "Expect: 100-continue", method="PUT"))
    interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert interim.startswith(b"HTTP/1.1 100")
    w.write(b"data")
    assert (await read_response(r)).body == b"data"
    w.close()


async def test_proxy_answers_502_when_upstream_drops_request(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """The API server closing before any answer becomes a 502 Status, then close."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/die"))
    resp = await read_response(r)
    assert resp.status == 502 and "lost the API server" in str(status_of(resp)["message"])
    assert await asyncio.wait_for(r.read(), TIMEOUT) == b""


async def test_proxy_closes_when_upstream_drops_mid_body(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """A response cut short upstream is cut short downstream (close, no invented bytes)."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/half"))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert b"Content-Length: 100" in head
    assert await asyncio.wait_for(r.read(), TIMEOUT) == b"0123456789"


async def test_proxy_closes_after_http10_response(pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy) -> None:
    """An HTTP/1.0 request without keep-alive gets its response, then the connection closes."""
    r, w = await connect(pki, proxy.port)
    w.write(b"GET /old HTTP/1.0\r\nHost: k\r\n\r\n")
    assert (await read_response(r)).status == 200
    assert await asyncio.wait_for(r.read(), TIMEOUT) == b""


async def test_proxy_bounds_buffering_for_slow_reader(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """A client that stops reading a 32 MB response makes the proxy stop reading upstream:
    at most a few watermarks of data are queued in the proxy, and nothing is lost."""
    n = 32 * 1024 * 1024
    r, w = await connect(pki, proxy.port)
    w.write(get(f"/big?n={n}"))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert b"200" in head
    (conn,) = proxy.connections
    await until(lambda: conn.upstream_paused, "the proxy to stop reading the API server")
    assert conn.transport is not None and conn.transport.get_write_buffer_size() < 4 * 1024 * 1024
    assert upstream.big_sent < n  # the API server is held back, not done
    h = hashlib.sha256()
    got = 0
    while got < n:
        chunk = await asyncio.wait_for(r.read(1 << 20), TIMEOUT)
        assert chunk
        h.update(chunk)
        got += len(chunk)
    assert got == n and h.digest() == hashlib.sha256(pattern(n, b"big")).digest()
    w.close()


async def test_proxy_forgets_closed_client_connections(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """A client closing mid-watch releases its connection (and the upstream one)."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/watch"))
    await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert len(proxy.connections) == 1
    w.close()
    await until(lambda: not proxy.connections, "the proxy to forget the connection", TIMEOUT)


async def test_proxy_times_out_partial_head_and_idle_connection(pki: Pki, upstream: RecordingUpstream) -> None:
    """A head that never completes gets 408 and a close; an idle kept-alive connection is closed;
    a watch in flight is never idle."""
    config = KubeAadProxyConfig(
        upstream_url=upstream.url, upstream_ca_pem=pki.ca.certificate_pem, serving_cert=pki.proxy_cert,
        head_timeout=0.3, idle_timeout=0.6,
    )
    p = KubeAadProxy(config)
    await p.start()
    try:
        r1, w1 = await connect(pki, p.port)
        w1.write(b"GET /slow HTTP/1.1\r\nHost: k\r\n")
        r2, w2 = await connect(pki, p.port)
        w2.write(get("/once"))
        assert (await read_response(r2)).status == 200
        r3, w3 = await connect(pki, p.port)
        w3.write(get("/watch"))
        await asyncio.wait_for(r3.readuntil(b"\r\n\r\n"), TIMEOUT)
        resp = await read_response(r1)
        assert resp.status == 408
        assert await asyncio.wait_for(r2.read(), TIMEOUT) == b""
        # A connection going idle after the watch's last byte is closed after
        # idle_timeout: by then the silent watch was idle longer, and stays open.
        r4, w4 = await connect(pki, p.port)
        w4.write(get("/after-watch"))
        assert (await read_response(r4)).status == 200
        assert await asyncio.wait_for(r4.read(), TIMEOUT) == b""
        await upstream.watch_events.put(b"still-open")
        assert (await asyncio.wait_for(r3.readuntil(b"still-open\r\n"), TIMEOUT)).endswith(b"still-open\r\n")
        assert [x.path for x in upstream.received] == ["/once", "/watch", "/after-watch"]
        w3.close()
    finally:
        await p.stop()


async def test_proxy_reopens_upstream_after_idle_close(
    pki: Pki, upstream: RecordingUpstream, proxy: KubeAadProxy
) -> None:
    """The API server dropping an idle kept-alive connection does not end kubectl's:
    the next request goes out on a new upstream connection."""
    r, w = await connect(pki, proxy.port)
    w.write(get("/idle-close"))
    assert (await read_response(r)).status == 200
    (conn,) = proxy.connections
    await until(lambda: conn._up is None, "the proxy to notice the upstream close", TIMEOUT)
    w.write(get("/next"))
    assert (await read_response(r)).body.endswith(b'"/next"}')
    assert upstream.connections == 2
    w.close()
