"""``relay.listener.RelayListener`` with the MemoryBIO TLS engine serving an
aiohttp application: what handlers see, bodies both ways, flow control, IPv6."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from certs import CertificateAuthority, client_ssl_context, server_ssl_context
from relay.edge_limits import EdgeLimits
from relay.listener import RelayListener
from tests.support.waits import WAIT

BIG = 8 * 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Served:
    """A listener, its client session and what the handlers recorded."""

    listener: RelayListener
    http: aiohttp.ClientSession
    url: str
    host: str
    ca_pem: bytes
    buffer_sizes: list[int]
    high_water: list[int]
    unread: list[int]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def info(request: web.Request) -> web.Response:
    """What aiohttp tells a handler about the connection."""
    transport = request.transport
    assert transport is not None
    return web.json_response({
        "secure": request.secure, "scheme": request.scheme, "remote": request.remote,
        "cipher": transport.get_extra_info("cipher")[0],
        "ssl_object": transport.get_extra_info("ssl_object") is not None,
        "socket": transport.get_extra_info("socket") is not None,
    })


async def upload(request: web.Request) -> web.Response:
    """SHA-256 of the request body, read in pieces."""
    digest = hashlib.sha256()
    while chunk := await request.content.read(CHUNK):
        digest.update(chunk)
    return web.Response(text=digest.hexdigest())


def download(buffer_sizes: list[int], high_water: list[int]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        """BIG deterministic bytes; records the transport's buffer after each drain."""
        resp = web.StreamResponse()
        await resp.prepare(request)
        assert request.transport is not None
        high_water.append(request.transport.get_write_buffer_limits()[1])
        block = hashlib.sha256(b"x").digest() * (CHUNK // 32)
        for _ in range(BIG // CHUNK):
            await resp.write(block)
            buffer_sizes.append(request.transport.get_write_buffer_size())
        await resp.write_eof()
        return resp
    return handler


def slow_upload(unread: list[int]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        """Reads the body 64 KiB at a time, yielding to the loop between reads;
        records how much had arrived unread at each step."""
        consumed = 0
        while chunk := await request.content.read(CHUNK):
            consumed += len(chunk)
            unread.append(request.content.total_bytes - consumed)
            for _ in range(4):
                await asyncio.sleep(0)  # let the socket side run: a slow reader
        return web.Response(text=str(consumed))
    return handler


async def echo_ws(request: web.Request) -> web.WebSocketResponse:
    """A websocket echoing every binary message."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def start(host: str) -> tuple[Served, web.AppRunner]:
    authority = CertificateAuthority.create("edge test CA")
    issued = authority.issue_server(("localhost",), ("127.0.0.1", "::1"))
    buffer_sizes: list[int] = []
    high_water: list[int] = []
    app = web.Application(client_max_size=BIG * 2)
    app.router.add_get("/info", info)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download(buffer_sizes, high_water))
    app.router.add_get("/ws", echo_ws)
    unread: list[int] = []
    app.router.add_post("/slow-upload", slow_upload(unread))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    listener = RelayListener(runner, server_ssl_context(issued), EdgeLimits())
    await listener.start(host, 0)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(authority.certificate_pem)))
    url = f"https://{f'[{host}]' if ':' in host else host}:{listener.port}"
    return Served(listener, http, url, host, authority.certificate_pem, buffer_sizes, high_water, unread), runner


@pytest.fixture(params=["127.0.0.1", "::1"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """The listener on IPv4 and IPv6 loopback."""
    if request.param == "::1" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    s, runner = await start(request.param)
    try:
        yield s
    finally:
        await s.http.close()
        s.listener.close()
        await runner.cleanup()


async def test_listener_gives_handlers_secure_remote_and_transport(served: Served) -> None:
    """request.secure, request.remote and request.transport work as on a TCPSite."""
    async with served.http.get(served.url + "/info") as resp:
        body = await resp.json()
    assert body == {"secure": True, "scheme": "https", "remote": served.host, "cipher": body["cipher"],
                    "ssl_object": True, "socket": True}
    assert body["cipher"].startswith("TLS_") or "-" in body["cipher"]


async def test_listener_carries_large_bodies_both_ways(served: Served) -> None:
    """An 8 MiB upload and an 8 MiB download arrive byte-exact."""
    payload = os.urandom(BIG)
    async with served.http.post(served.url + "/upload", data=payload) as resp:
        assert await resp.text() == hashlib.sha256(payload).hexdigest()
    digest, expected = hashlib.sha256(), hashlib.sha256()
    block = hashlib.sha256(b"x").digest() * (CHUNK // 32)
    for _ in range(BIG // CHUNK):
        expected.update(block)
    async with served.http.get(served.url + "/download") as resp:
        async for chunk in resp.content.iter_chunked(CHUNK):
            digest.update(chunk)
    assert digest.hexdigest() == expected.hexdigest()


async def test_listener_pauses_a_writer_whose_reader_is_slow(served: Served) -> None:
    """With a client that reads slowly, the handler's drain waits: the socket's
    buffer never holds more than the high-water mark plus one write."""
    reader, writer = await asyncio.open_connection(
        served.host, served.listener.port, ssl=client_ssl_context(served.ca_pem),
        server_hostname="localhost", limit=CHUNK)
    writer.write(b"GET /download HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    received = 0
    async with asyncio.timeout(WAIT * 3):
        while chunk := await reader.read(4096):
            received += len(chunk)
            await asyncio.sleep(0)  # let the server run between small reads
    writer.close()
    assert received > BIG
    bound = served.high_water[0] + CHUNK + 4096  # one write's ciphertext over the mark
    assert max(served.buffer_sizes) <= bound, (max(served.buffer_sizes), bound)
    assert max(served.buffer_sizes) > 0, "the reader never fell behind: the test proves nothing"


async def test_listener_pauses_the_socket_when_the_handler_reads_slowly(served: Served) -> None:
    """A handler that reads slower than the client sends: what has arrived
    unread stays near aiohttp's buffer limit (the socket is paused), not the body."""
    body = os.urandom(4 * BIG)
    async with served.http.post(served.url + "/slow-upload", data=body) as resp:
        assert int(await resp.text()) == len(body)
    # ~0.7 MiB measured, the same as on asyncio's TLS transport (aiohttp's
    # payload limit plus the socket reads in flight); unpaused it is the body.
    assert max(served.unread) <= 2 * 1024 * 1024, max(served.unread)
    assert max(served.unread) > CHUNK, "the handler never fell behind: the test proves nothing"


async def test_listener_serves_websocket_upgrades(served: Served) -> None:
    """A websocket upgrade and 1 MiB of binary messages echo exactly."""
    async with served.http.ws_connect(served.url + "/ws") as ws:
        for i in range(16):
            data = bytes([i]) * CHUNK
            await ws.send_bytes(data)
            msg = await ws.receive(timeout=WAIT)
            assert msg.data == data


async def test_listener_refuses_plain_http_on_tls_port(served: Served) -> None:
    """Plain HTTP bytes on the TLS port fail the handshake: the socket closes."""
    reader, writer = await asyncio.open_connection(served.host, served.listener.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(WAIT):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass
    writer.close()
    assert served.listener.stats.closed["tls error"] == 1
    assert served.listener.preauth_connections == 0



async def test_listener_answers_client_hello_on_its_handshake_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``tls_handshake_threads`` (default 2) the ClientHello step of every
    handshake runs on the listener's pool, not on the event loop thread; with
    0 it runs inline. Requests are served either way."""
    import threading

    from relay import tls_server

    for threads in (2, 0):
        ran_on: list[str] = []
        original = tls_server._handshake_in_thread

        def recording(tls: object, original: Callable[[object], bool] = original,
                      ran_on: list[str] = ran_on) -> bool:
            ran_on.append(threading.current_thread().name)
            return original(tls)

        monkeypatch.setattr(tls_server, "_handshake_in_thread", recording)
        authority = CertificateAuthority.create("edge test CA")
        issued = authority.issue_server(("localhost",), ("127.0.0.1",))
        app = web.Application()
        app.router.add_get("/info", info)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        listener = RelayListener(runner, server_ssl_context(issued), EdgeLimits(tls_handshake_threads=threads))
        await listener.start("127.0.0.1", 0)
        try:
            connector = aiohttp.TCPConnector(ssl=client_ssl_context(authority.certificate_pem), force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                for _ in range(3):
                    async with asyncio.timeout(WAIT):
                        async with http.get(f"https://127.0.0.1:{listener.port}/info") as resp:
                            assert resp.status == 200
        finally:
            listener.close()
            await runner.cleanup()
            monkeypatch.setattr(tls_server, "_handshake_in_thread", original)
        if threads:
            assert len(ran_on) == 3 and all(name.startswith("arc-relay-tls") for name in ran_on)
        else:
            assert ran_on == []
