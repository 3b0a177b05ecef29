"""port-forward over SPDY and SPDY-over-websocket, with raw clients and with
real kubectl (50 MB byte-exact transfers, checked by sha256)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sandbox.test_streaming_harness import (
    WAIT,
    Harness,
    SpdyClient,
    make_pod,
    open_upgrade,
    running_harness,
)
from tests.support.kubectl import require_kubectl

pytestmark = pytest.mark.timeout(120)
BIG = 50 * 1024 * 1024
PAYLOAD = os.urandom(1 << 20) * (BIG >> 20)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


async def _target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """'D': send PAYLOAD and close; 'U': hash everything until EOF, reply hex."""
    mode = await reader.readexactly(1)
    if mode == b"D":
        writer.write(PAYLOAD)
    elif mode == b"E":
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
    else:
        h = hashlib.sha256()
        while chunk := await reader.read(1 << 18):
            h.update(chunk)
        writer.write(h.hexdigest().encode())
    await writer.drain()
    writer.close()


@pytest.fixture
async def pf(tmp_path: Path) -> AsyncIterator[Harness]:
    server = await asyncio.start_server(_target, "127.0.0.1", 0)
    tport = server.sockets[0].getsockname()[1]
    pod = make_pod(annotations={
        "portforward.sandbox.cluster-connect.dev/8080": f"127.0.0.1:{tport}",
        "portforward.sandbox.cluster-connect.dev/9090": "10.1.2.3:80",
    })
    async with running_harness(tmp_path, [pod]) as h:
        yield h
    server.close()
    await server.wait_closed()


async def _spdy_pf(h: Harness) -> SpdyClient:
    reader, writer, code, headers = await open_upgrade(
        h, "POST", "/api/v1/namespaces/default/pods/p/portforward",
        {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
         "X-Stream-Protocol-Version": "portforward.k8s.io"})
    assert code == 101
    assert headers["x-stream-protocol-version"] == "portforward.k8s.io"
    return SpdyClient(reader, writer)


async def test_spdy_portforward_echoes_bytes_both_ways(pf: Harness) -> None:
    """A raw SPDY client pairs error+data streams and gets an echo back."""
    c = await _spdy_pf(pf)
    err = await c.open([("streamType", "error"), ("port", "8080"), ("requestID", "0")])
    await c.send(err, b"", fin=True)
    data = await c.open([("streamType", "data"), ("port", "8080"), ("requestID", "0")])
    await c.send(data, b"E" + b"x" * 100_000, fin=True)
    await c.pump(lambda s: data in s.fin)
    assert bytes(c.data[data]) == b"x" * 100_000
    assert {err, data} <= c.replied
    c.writer.close()


async def test_spdy_portforward_reports_unknown_and_non_loopback_ports(pf: Harness) -> None:
    """Undeclared and non-loopback targets: a kubelet-style message on the error stream."""
    c = await _spdy_pf(pf)
    for rid, port in (("0", "7777"), ("1", "9090")):
        err = await c.open([("streamType", "error"), ("port", port), ("requestID", rid)])
        data = await c.open([("streamType", "data"), ("port", port), ("requestID", rid)])
        await c.pump(lambda s, e=err: e in s.fin)
        text = bytes(c.data[err]).decode()
        assert text.startswith(f"error forwarding port {port} to pod p, uid uid-p: ")
        assert data in c.fin
    assert "connection refused" in bytes(c.data[1]).decode()
    assert "not a loopback" in bytes(c.data[5]).decode()
    c.writer.close()


async def test_spdy_portforward_downloads_50mb_byte_exact(pf: Harness) -> None:
    """50 MB from the target arrive intact over raw SPDY."""
    c = await _spdy_pf(pf)
    err = await c.open([("streamType", "error"), ("port", "8080"), ("requestID", "0")])
    await c.send(err, b"", fin=True)
    data = await c.open([("streamType", "data"), ("port", "8080"), ("requestID", "0")])
    await c.send(data, b"D")
    await c.pump(lambda s: data in s.fin)
    assert hashlib.sha256(bytes(c.data[data])).hexdigest() == PAYLOAD_SHA
    c.writer.close()


async def _kubectl_transfer(h: Harness, version: str, env: dict[str, str]) -> None:
    """Run ``kubectl port-forward``; move 50 MB down and 50 MB up, sha256-checked."""
    kubectl = require_kubectl(version)
    proc = await asyncio.create_subprocess_exec(
        kubectl, "--kubeconfig", str(h.kubeconfig), "port-forward", "p", ":8080",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert b"Forwarding from 127.0.0.1:" in line, line
        lport = int(line.split(b"->")[0].rsplit(b":", 1)[1])

        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"D")
        await writer.drain()
        digest, total = hashlib.sha256(), 0
        while chunk := await asyncio.wait_for(reader.read(1 << 18), WAIT):
            digest.update(chunk)
            total += len(chunk)
        writer.close()
        assert (total, digest.hexdigest()) == (BIG, PAYLOAD_SHA)

        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"U")
        writer.write(PAYLOAD)
        await writer.drain()
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        assert echoed.decode() == PAYLOAD_SHA
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)


def _upgrades(h: Harness) -> list[str]:
    return [hd.get("upgrade", "") for m, p, hd in h.requests if p.endswith("/portforward")]


@pytest.mark.kubectl
async def test_kubectl_127_portforward_moves_50mb_over_spdy(pf: Harness) -> None:
    """kubectl 1.27 forwards over SPDY/3.1, byte-exact both ways."""
    await _kubectl_transfer(pf, "1.27", {})
    assert _upgrades(pf) == ["SPDY/3.1"]


@pytest.mark.kubectl
async def test_kubectl_133_portforward_moves_50mb_over_websocket_tunnel(pf: Harness) -> None:
    """kubectl 1.33 tunnels SPDY in websocket messages, byte-exact both ways."""
    await _kubectl_transfer(pf, "1.33", {})
    assert _upgrades(pf) == ["websocket"]


@pytest.mark.kubectl
async def test_kubectl_130_portforward_uses_websockets_when_opted_in(pf: Harness) -> None:
    """kubectl 1.30 with KUBECTL_PORT_FORWARD_WEBSOCKETS=true tunnels too."""
    await _kubectl_transfer(pf, "1.30", {"KUBECTL_PORT_FORWARD_WEBSOCKETS": "true"})
    assert _upgrades(pf) == ["websocket"]


async def test_ws_tunnel_portforward_accepts_arbitrary_message_boundaries(pf: Harness) -> None:
    """SPDY bytes split at odd places across websocket messages still parse."""
    from websockets.frames import Opcode

    from sandbox.streaming.spdy.frames import Data, Ping, SpdyConnection
    from tests.sandbox.test_streaming_harness import WsClient, ws_headers

    reader, writer, code, headers = await open_upgrade(
        pf, "GET", "/api/v1/namespaces/default/pods/p/portforward",
        ws_headers("SPDY/3.1+portforward.k8s.io"))
    assert code == 101 and headers["sec-websocket-protocol"] == "SPDY/3.1+portforward.k8s.io"
    ws = WsClient(reader, writer)
    spdy = SpdyConnection()
    spdy.send_syn_stream(1, [("streamType", "error"), ("port", "8080"), ("requestID", "0")])
    spdy.send_syn_stream(3, [("streamType", "data"), ("port", "8080"), ("requestID", "0")])
    spdy.send_data(3, b"E" + b"y" * 5000, fin=True)
    spdy.send_ping(1)
    raw = spdy.data_to_send()
    for i in range(0, len(raw), 7):  # 7-byte messages: every frame header is split
        await ws.send(raw[i:i + 7])
    got, pong = bytearray(), False
    async for op, payload in ws.frames():
        if op != Opcode.BINARY:
            continue
        for f in spdy.receive_data(payload):
            if isinstance(f, Data) and f.stream_id == 3:
                got += f.data
            pong = pong or isinstance(f, Ping)
        if bytes(got) == b"y" * 5000 and pong:
            break
    writer.close()
    assert bytes(got) == b"y" * 5000 and pong


async def test_ws_portforward_refuses_other_subprotocols(pf: Harness) -> None:
    """Websocket port-forward without the SPDY tunnel subprotocol is a 400."""
    from tests.sandbox.test_streaming_harness import ws_headers

    _, writer, code, _ = await open_upgrade(
        pf, "GET", "/api/v1/namespaces/default/pods/p/portforward",
        ws_headers("v4.channel.k8s.io"))
    assert code == 400
    writer.close()


async def _start_pf(h: Harness, version: str, port: str
                    ) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        require_kubectl(version), "--kubeconfig", str(h.kubeconfig), "port-forward", "p",
        f":{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
    assert b"Forwarding from 127.0.0.1:" in line, line
    return proc, int(line.split(b"->")[0].rsplit(b":", 1)[1])


@pytest.mark.kubectl
@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_kubectl_portforward_pairs_concurrent_connections(pf: Harness,
                                                                version: str) -> None:
    """Several local connections at once: each gets its own echo (requestID pairing)."""
    proc, lport = await _start_pf(pf, version, "8080")

    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        body = bytes([i]) * 300_000
        writer.write(b"E" + body)
        await writer.drain()
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        return got

    try:
        results = await asyncio.gather(*(one(i) for i in range(6)))
        assert results == [bytes([i]) * 300_000 for i in range(6)]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)


@pytest.mark.kubectl
async def test_kubectl_portforward_shows_the_error_for_an_undeclared_port(pf: Harness) -> None:
    """An undeclared pod port: kubectl reports the kubelet-style error text."""
    proc, lport = await _start_pf(pf, "1.33", "7777")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"x")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)
    assert proc.stderr is not None
    err = await proc.stderr.read()
    assert b"error forwarding port 7777 to pod p, uid uid-p: dial tcp4 127.0.0.1:7777" in err
