"""A small loopback TLS API server for the streaming tests: just enough
discovery, pod GET and pods/log for kubectl, and every exec/attach/portforward
request handed to ``sandbox.streaming.serve_upgrade`` exactly as the sandbox
API server does. Also home of the raw test clients (websocket, SPDY)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import pytest
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

from certs import CertificateAuthority, client_ssl_context, server_ssl_context
from sandbox.runtime import PodRuntime
from sandbox.streaming import UpgradeRequest, serve_upgrade
from sandbox.streaming.spdy.frames import Data, SpdyConnection, SynReply

TOKEN = "harness-admin-token"
WAIT = 20.0  # every wait in these tests is bounded by this


def make_pod(name: str = "p", annotations: dict[str, str] | None = None,
             containers: list[str] | None = None) -> dict[str, Any]:
    """A pod object as the API server stores it."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                     "resourceVersion": "1", "annotations": annotations or {}},
        "spec": {"containers": [
            {"name": c, "image": "busybox:1.36",
             "env": [{"name": "GREETING", "value": "hello from " + c}]}
            for c in (containers or ["main"])]},
    }


class Harness:
    """TLS server on 127.0.0.1 that serves pods from ``PodRuntime``s."""

    def __init__(self, tmp: Path, pods: list[dict[str, Any]], version: str = "1.33") -> None:
        self.tmp = tmp
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.runtimes = {n: PodRuntime(p) for n, p in self.pods.items()}
        self.version = version
        self.ca = CertificateAuthority.create("harness-ca")
        self._server: asyncio.AbstractServer | None = None
        self.port = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        ctx = server_ssl_context(self.ca.issue_server())
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        (self.tmp / "ca.crt").write_bytes(self.ca.certificate_pem)
        self.kubeconfig = self.tmp / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "h",
            "clusters": [{"name": "h", "cluster": {"server": f"https://127.0.0.1:{self.port}",
                                                   "certificate-authority": str(self.tmp / "ca.crt")}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "h", "context": {"cluster": "h", "user": "u",
                                                   "namespace": "default"}}],
        }))

    async def stop(self) -> None:
        for rt in self.runtimes.values():
            rt.stop()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def client_ssl(self) -> ssl.SSLContext:
        return client_ssl_context(self.ca.certificate_pem)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                conn = h11.Connection(h11.SERVER)
                conn.receive_data(head)
                event = conn.next_event()
                if not isinstance(event, h11.Request):
                    return
                if not await self._dispatch(event, reader, writer):
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, event: h11.Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> bool:
        target = event.target.decode()
        url = urlsplit(target)
        headers = [(k.decode().lower(), v.decode()) for k, v in event.headers]
        hmap = dict(headers)
        length = int(hmap.get("content-length", "0") or 0)
        if length:
            await reader.readexactly(length)
        self.requests.append((event.method.decode(), url.path, hmap))
        if hmap.get("authorization") != f"Bearer {TOKEN}":
            return await self._json(writer, 401, {"kind": "Status", "status": "Failure",
                                                  "reason": "Unauthorized", "code": 401})
        parts = url.path.strip("/").split("/")
        query = parse_qsl(url.query, keep_blank_values=True)
        if url.path == "/version":
            minor = self.version.split(".")[1]
            return await self._json(writer, 200, {"major": "1", "minor": minor,
                                                  "gitVersion": f"v{self.version}.0"})
        if url.path == "/api":
            return await self._json(writer, 200, {"kind": "APIVersions", "versions": ["v1"],
                                                  "serverAddressByClientCIDRs": []})
        if url.path == "/apis":
            return await self._json(writer, 200, {"kind": "APIGroupList", "apiVersion": "v1",
                                                  "groups": []})
        if url.path == "/api/v1":
            return await self._json(writer, 200, _RESOURCES)
        if len(parts) >= 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            name = parts[5]
            rt = self.runtimes.get(name)
            if rt is None:
                return await self._json(writer, 404, {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": f'pods "{name}" not found', "reason": "NotFound", "code": 404,
                    "details": {"name": name, "kind": "pods"}})
            if len(parts) == 6:
                return await self._json(writer, 200, self._pod_with_status(name))
            sub = parts[6]
            if sub == "log":
                return await self._log(writer, rt, dict(query))
            if sub in ("exec", "attach", "portforward"):
                req = UpgradeRequest(method=event.method.decode(), path=url.path, query=query,
                                     headers=headers, reader=reader, writer=writer,
                                     user="admin")
                await serve_upgrade(sub, req, rt)
                return False
        return await self._json(writer, 404, {"kind": "Status", "status": "Failure",
                                              "reason": "NotFound", "code": 404})

    def _pod_with_status(self, name: str) -> dict[str, Any]:
        pod = dict(self.pods[name])
        pod["status"] = {"phase": "Running", "podIP": "10.0.0.7", "containerStatuses": [
            {"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"],
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
            for c in pod["spec"]["containers"]]}
        return pod

    async def _json(self, writer: asyncio.StreamWriter, code: int, body: Any) -> bool:
        data = json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        return True

    async def _log(self, writer: asyncio.StreamWriter, rt: PodRuntime, q: dict[str, str]) -> bool:
        stream = rt.log_stream(q.get("container"), follow=q.get("follow") == "true",
                               tail_lines=int(q["tailLines"]) if "tailLines" in q else None,
                               timestamps=q.get("timestamps") == "true")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        async for chunk in stream:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False


_RESOURCES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
    "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
         "shortNames": ["po"]},
        {"name": "pods/attach", "singularName": "", "namespaced": True, "kind": "PodAttachOptions",
         "verbs": ["create", "get"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions",
         "verbs": ["create", "get"]},
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
         "verbs": ["get"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": True,
         "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
    ],
}


@contextlib.asynccontextmanager
async def running_harness(tmp: Path, pods: list[dict[str, Any]]) -> AsyncIterator[Harness]:
    """Start a harness, stop it afterwards."""
    h = Harness(tmp, pods)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


# ---------------------------------------------------------------- raw clients


async def open_upgrade(h: Harness, method: str, path: str, headers: dict[str, str]
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict[str, str]]:
    """Send an upgrade request; returns the streams, status code and headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port, ssl=h.client_ssl(),
                                                   server_hostname="localhost")
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{h.port}",
             f"Authorization: Bearer {TOKEN}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    status_line, *rest = head.decode().split("\r\n")
    resp = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in rest if x)}
    return reader, writer, int(status_line.split()[1]), resp


class WsClient:
    """A client websocket on an already-upgraded connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.proto = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)

    async def send(self, data: bytes, text: bool = False) -> None:
        if text:
            self.proto.send_text(data)
        else:
            self.proto.send_binary(data)
        for chunk in self.proto.data_to_send():
            self.writer.write(chunk)
        await self.writer.drain()

    async def ping(self, data: bytes) -> None:
        self.proto.send_ping(data)
        for chunk in self.proto.data_to_send():
            self.writer.write(chunk)
        await self.writer.drain()

    async def frames(self) -> AsyncIterator[tuple[Opcode, bytes]]:
        """Every frame until the server closes."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            if data:
                self.proto.receive_data(data)
            else:
                self.proto.receive_eof()
            for f in self.proto.events_received():
                yield f.opcode, f.data
            for chunk in self.proto.data_to_send():
                if chunk:
                    self.writer.write(chunk)
            if not data or self.proto.state is State.CLOSED:
                return


def ws_headers(protocols: str) -> dict[str, str]:
    return {"Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Protocol": protocols}


class SpdyClient:
    """The client half of SPDY on an upgraded connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = SpdyConnection()
        self.next_id = 1
        self.data: dict[int, bytearray] = {}
        self.fin: set[int] = set()
        self.replied: set[int] = set()
        self.frames: list[object] = []

    async def open(self, headers: list[tuple[str, str]], fin: bool = False) -> int:
        sid = self.next_id
        self.next_id += 2
        self.data[sid] = bytearray()
        self.conn.send_syn_stream(sid, headers, fin=fin)
        await self.flush()
        return sid

    async def send(self, sid: int, data: bytes, fin: bool = False) -> None:
        self.conn.send_data(sid, data, fin=fin)
        await self.flush()

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def pump(self, until: Any) -> None:
        """Read frames until ``until(self)`` is true or EOF."""
        while not until(self):
            chunk = await asyncio.wait_for(self.reader.read(1 << 18), WAIT)
            if not chunk:
                return
            for f in self.conn.receive_data(chunk):
                self.frames.append(f)
                if isinstance(f, Data):
                    self.data.setdefault(f.stream_id, bytearray()).extend(f.data)
                    if f.fin:
                        self.fin.add(f.stream_id)
                elif isinstance(f, SynReply):
                    self.replied.add(f.stream_id)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path, [make_pod()]) as h:
        yield h


async def test_harness_serves_pod_and_discovery(harness: Harness) -> None:
    """The harness answers the GETs kubectl makes before a streaming call."""
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.port,
                                                   ssl=harness.client_ssl(),
                                                   server_hostname="localhost")
    writer.write(f"GET /api/v1/namespaces/default/pods/p HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    pod = json.loads(await reader.readexactly(length))
    assert pod["status"]["phase"] == "Running"
    writer.close()
