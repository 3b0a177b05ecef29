"""The HTTP/1.1 layer of the sandbox API server over real TLS sockets:
keep-alive, Connection: close, body caps, ALPN."""

from __future__ import annotations

import json
import socket
import ssl

from sandbox.apiserver.http import MAX_BODY
from tests.support.sandbox import RunningApiServer
from tests.support.waits import wait_until

# Socket operations in these tests give up after this many seconds.
SOCKET_TIMEOUT = 10.0


def _connect(server: RunningApiServer) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(server.server.ca_file))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", server.server.port), timeout=SOCKET_TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _read_response(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response head"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return status, headers, body[:length]


def _get(server: RunningApiServer, path: str, extra: str = "") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {server.server.admin_token}\r\n"
            f"{extra}\r\n").encode()


def test_http_keeps_alive_and_negotiates_http11_only(sandbox_apiserver: RunningApiServer) -> None:
    """Two requests share one connection; ALPN picks http/1.1 even when h2 is offered."""
    with _connect(sandbox_apiserver) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(_get(sandbox_apiserver, "/version"))
        status, _, body = _read_response(sock)
        assert status == 200 and json.loads(body)["gitVersion"] == "v1.33.0"
        sock.sendall(_get(sandbox_apiserver, "/api/v1/namespaces/default"))
        status, _, body = _read_response(sock)
        assert status == 200 and json.loads(body)["metadata"]["name"] == "default"


def test_http_closes_after_connection_close(sandbox_apiserver: RunningApiServer) -> None:
    """A request with Connection: close gets a response saying so, then EOF."""
    with _connect(sandbox_apiserver) as sock:
        sock.sendall(_get(sandbox_apiserver, "/healthz", "Connection: close\r\n"))
        status, headers, body = _read_response(sock)
        assert (status, body, headers.get("connection")) == (200, b"ok", "close")
        assert sock.recv(1) == b""


def test_http_refuses_oversized_body_with_status(sandbox_apiserver: RunningApiServer) -> None:
    """A body over the 3 MiB cap is a 413 Status, without reading the body."""
    with _connect(sandbox_apiserver) as sock:
        head = (f"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: localhost\r\n"
                f"Authorization: Bearer {sandbox_apiserver.server.admin_token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n")
        sock.sendall(head.encode())
        status, _, body = _read_response(sock)
        assert status == 413 and json.loads(body)["reason"] == "RequestEntityTooLarge"


def test_http_answers_malformed_request_with_400(sandbox_apiserver: RunningApiServer) -> None:
    """Garbage instead of a request line is a 400 Status and a closed connection."""
    with _connect(sandbox_apiserver) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\x00\x01\r\n\r\n")
        status, headers, body = _read_response(sock)
        assert status == 400 and headers.get("connection") == "close"
        assert json.loads(body)["reason"] == "BadRequest"


def test_http_watch_is_released_when_the_client_goes_away(sandbox_apiserver: RunningApiServer) -> None:
    """Closing the socket of a chunked watch ends it on the server (no leaked watcher)."""

    store = sandbox_apiserver.server.store

    def watchers() -> int:
        return int(sandbox_apiserver.loop.call(lambda: len(store._watchers)))

    before = watchers()
    sock = _connect(sandbox_apiserver)
    sock.sendall(_get(sandbox_apiserver, "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=0"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk
        head += chunk
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    assert watchers() == before + 1
    sock.close()
    wait_until(lambda: watchers() == before, "the server to drop the closed watch", SOCKET_TIMEOUT)
