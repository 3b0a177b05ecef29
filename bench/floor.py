"""The least work the full path's architecture requires, run as a path of its own.

``bench.e2e`` measures it beside the tunnel and ``ssh -R`` (the "floor" row).
Three processes stand where arc-proxy, arc-relay and arc-agent stand and do
only what the architecture makes unavoidable for one stream:

    client ─TCP─▶ A ══TLS══▶ B ══TLS══▶ C ─TCP─▶ sink
               (like arc-proxy) (like the relay) (like the agent)

B ends one TLS session and starts another because the relay is the public
endpoint both sides dial and must see which cluster a byte is for; A and C
each end one. Nothing else: no websocket, no tunnel framing, no
multiplexing, no flow control, no asyncio. Blocking sockets, a thread per
direction, 256 KiB socket reads with every whole TLS record in them
decrypted at once (as asyncio's TLS layer does), TLS through memory BIOs of
the same ``ssl`` module and the same certificate set-up (``certs``) as the
daemons, the allocator tuned as theirs is. What this path costs per byte bounds any implementation
of the architecture from below; where it moves fewer bytes per second than
``ssh -R`` in the same run (one encrypted leg, two processes), no tunnel can
meet the "throughput >= ssh -R" goal on that machine.

``--io asyncio`` runs the same hops on asyncio's transports and TLS
(``sslproto``, what aiohttp uses) with flow control, still without framing:
it tells what the event loop and its TLS layer cost from what the websocket
and tunnel layers cost. (asyncio's TLS transport cannot half-close; the
benchmark's sink does not need it.)

``--framing ws`` adds the one more thing the architecture requires on its
TLS legs: RFC 6455 websocket frames (the agent and arc-proxy dial out over a
websocket), each one carrying a tunnel DATA frame of the adapter's payload
size (``tunnel.frames`` header, 64 KiB), masked by the websocket client
(A and C) with the C mask of the ``websockets`` package, unmasked by the
relay, which also rewrites the stream id as the relay's router does.
Still no multiplexing, flow control or asyncio: what is left between this
path and the tunnel is the cost of our own layers, not of the architecture.

``--tls pyopenssl`` runs the TLS hops with pyOpenSSL instead, when it is
installed: the OpenSSL that ``cryptography`` bundles (4.0 here, with the
AVX-512 AES-GCM code: ~1.9x the system OpenSSL 3.0's AES-GCM speed) and
AES-128-GCM: to tell the cost of the architecture from that of one OpenSSL
build.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
READ = 256 * 1024
# Where each hop reads and writes: (name, in, out), listed sink side first so
# each hop's upstream port is known when it starts.
HOPS = (("C", "tls", "plain"), ("B", "tls", "tls"), ("A", "plain", "tls"))


class _End(Protocol):
    def send(self, data: memoryview) -> None: ...
    def send_parts(self, parts: list[bytes | memoryview]) -> None: ...
    def recv_into(self, buf: bytearray | memoryview) -> int: ...
    def close_write(self) -> None: ...


def _batches(end: _End) -> Any:
    """What ``end`` receives, one read at a time, as views of one reused
    buffer (valid until the next batch is taken)."""
    buf = bytearray(READ)
    view = memoryview(buf)
    while n := end.recv_into(buf):
        yield [view[:n]]


class _Plain:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: memoryview) -> None:
        self.sock.sendall(data)

    def send_parts(self, parts: list[bytes | memoryview]) -> None:
        sent = self.sock.sendmsg(parts)  # one system call for the lot
        for part in parts:
            if sent < len(part):
                self.sock.sendall(memoryview(part)[sent:])
            sent = max(0, sent - len(part))

    def recv_into(self, buf: bytearray | memoryview) -> int:
        return self.sock.recv_into(buf)

    def close_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)


def _handshake(step: Callable[[], object], want_read: type[Exception],
               flush: Callable[[], None], fill: Callable[[], bool]) -> None:
    """Drive a memory-BIO handshake over a blocking socket: ``step`` until it
    stops wanting to read, sending what it produced (``flush``) and reading
    what it needs (``fill``, False at EOF)."""
    while True:
        try:
            step()
            break
        except want_read:
            flush()
            if not fill():
                raise ConnectionError("peer closed during the TLS handshake") from None
    flush()


class _StdlibTls:
    """TLS over memory BIOs, as asyncio's own TLS transport does it, but with
    one read of up to 256 KiB feeding as many records as it holds.

    Two threads use one end, one sending and one receiving, and OpenSSL
    releases the GIL: ``lock`` keeps them out of the TLS state at the same
    time (never held across a blocking socket call).
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server,
                                server_hostname=None if server else "localhost")
        self.lock = threading.Lock()
        self.raw = bytearray(READ)
        self.raw_view = memoryview(self.raw)
        _handshake(self.tls.do_handshake, ssl.SSLWantReadError, self._flush, self._fill)

    def _flush(self) -> None:
        with self.lock:
            data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> bool:
        n = self.sock.recv_into(self.raw)
        if n:
            with self.lock:
                self.incoming.write(self.raw_view[:n])
        return bool(n)

    def _read(self, view: memoryview) -> int:
        with self.lock:
            return self.tls.read(len(view), view)

    def send(self, data: memoryview) -> None:
        self.send_parts([data])

    def send_parts(self, parts: list[bytes | memoryview]) -> None:
        with self.lock:
            for part in parts:
                self.tls.write(part)
        self._flush()

    def recv_into(self, buf: bytearray | memoryview) -> int:
        """Wait for one record, then add every whole record already read
        from the socket (one call per socket read, not per 16 KiB record)."""
        view = memoryview(buf)
        while True:
            try:
                n = self._read(view)
                break
            except ssl.SSLWantReadError:
                if not self._fill():
                    return 0
            except ssl.SSLZeroReturnError:
                return 0
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            while n < len(view) and (got := self._read(view[n:])):
                n += got
        return n

    def close_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)


class _PyOpenSslTls:
    """The same over pyOpenSSL, as lean as it goes: OpenSSL's own calls on
    buffers we keep (``OpenSSL._util``: no bytes made per call), and
    AES-128-GCM first, which stdlib ``ssl`` cannot ask of TLS 1.3. Locked
    as ``_StdlibTls`` is (cffi releases the GIL too)."""

    def __init__(self, sock: socket.socket, state: Path, server: bool) -> None:
        from OpenSSL import SSL
        from OpenSSL._util import ffi, lib

        self.ffi, self.lib = ffi, lib
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        lib.SSL_CTX_set_ciphersuites(ctx._context, b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384")
        if server:
            ctx.use_certificate_chain_file(str(state / "hop.crt"))
            ctx.use_privatekey_file(str(state / "hop.key"))
        else:
            ctx.load_verify_locations(str(state / "ca.crt"))
            ctx.set_verify(SSL.VERIFY_PEER)
        self.sock = sock
        self.lock = threading.Lock()
        self.conn = SSL.Connection(ctx, None)
        if server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        self.raw = bytearray(READ)
        self.raw_c = ffi.from_buffer(self.raw)
        self.out = bytearray(4 * READ)
        self.out_c, self.out_view = ffi.from_buffer(self.out), memoryview(self.out)
        _handshake(self.conn.do_handshake, SSL.WantReadError, self._flush, self._fill)

    def _flush(self) -> None:
        while True:
            with self.lock:
                n = int(self.lib.BIO_read(self.conn._from_ssl, self.out_c, len(self.out)))
            if n <= 0:
                return
            self.sock.sendall(self.out_view[:n])

    def _fill(self) -> bool:
        n = self.sock.recv_into(self.raw)
        if n:
            with self.lock:
                self.lib.BIO_write(self.conn._into_ssl, self.raw_c, n)
        return bool(n)

    def _read(self, target: Any, size: int) -> int:
        with self.lock:
            return int(self.lib.SSL_read(self.conn._ssl, target, size))

    def _write(self, data: bytes | memoryview) -> None:
        source, done = self.ffi.from_buffer(data), 0
        while done < len(data):
            n = int(self.lib.SSL_write(self.conn._ssl, source + done, len(data) - done))
            if n <= 0:
                raise ConnectionError("TLS write failed")
            done += n

    def send(self, data: memoryview) -> None:
        self.send_parts([data])

    def send_parts(self, parts: list[bytes | memoryview]) -> None:
        with self.lock:
            for part in parts:
                self._write(part)
        self._flush()

    def recv_into(self, buf: bytearray | memoryview) -> int:
        """As ``_StdlibTls.recv_into``: one record waited for, then all there are."""
        target, size = self.ffi.from_buffer(buf), len(buf)
        while (n := self._read(target, size)) <= 0:
            if not self._fill():
                return 0
        while n < size and (got := self._read(target + n, size - n)) > 0:
            n += got
        return n

    def close_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)


class _Websocket:
    """RFC 6455 binary frames, each one tunnel DATA frame, over a TLS end.

    Args:
        inner: The TLS end.
        client: True where this hop is the websocket's client (it masks what
            it sends and expects unmasked frames), False for the relay.
        stream_id: The id its DATA frames carry on this leg.
    """

    def __init__(self, inner: _End, client: bool, stream_id: int) -> None:
        from websockets.speedups import apply_mask

        from tunnel.aio import ADAPTER_SEND_PAYLOAD
        from tunnel.frames import HEADER, FrameType

        self.inner, self.client = inner, client
        self.apply_mask = apply_mask
        self.payload = ADAPTER_SEND_PAYLOAD
        self.header_size = HEADER.size
        self.data_header = HEADER.pack(FrameType.DATA, 0, stream_id)
        self.data_type = int(FrameType.DATA)
        # The payload's mask starts where the tunnel header ends (6 bytes in).
        self.shift = HEADER.size % 4

    def _ws_header(self, length: int) -> bytes:
        bit = 0x80 if self.client else 0
        if length < 126:
            return bytes((0x82, bit | length))
        if length < 65536:
            return bytes((0x82, bit | 126)) + length.to_bytes(2, "big")
        return bytes((0x82, bit | 127)) + length.to_bytes(8, "big")

    def send(self, data: memoryview) -> None:
        self.send_parts([data])

    def send_parts(self, data_parts: list[bytes | memoryview]) -> None:
        """Frame every part and write them with one flush (one TLS write
        pass and one send() for what one read brought)."""
        parts: list[bytes | memoryview] = []
        for data in data_parts:
            self._frame(memoryview(data), parts)
        self.inner.send_parts(parts)

    def _frame(self, data: memoryview, parts: list[bytes | memoryview]) -> None:
        for at in range(0, len(data), self.payload):
            chunk = data[at:at + self.payload]
            head = self._ws_header(self.header_size + len(chunk))
            if self.client:
                key = random.getrandbits(32).to_bytes(4, "big")
                shifted = key[self.shift:] + key[:self.shift]
                parts += (head + key + self.apply_mask(self.data_header, key),
                          self.apply_mask(chunk, shifted))
            else:
                parts += (head + self.data_header, chunk)

    def recv_into(self, buf: bytearray | memoryview) -> int:
        raise NotImplementedError("read a websocket end with batches()")

    def close_write(self) -> None:
        self.inner.close_write()

    def batches(self) -> Any:
        """The DATA payloads received, a list per read of the TLS end, each
        a view valid until the next list is taken."""
        buf = bytearray(4 * READ)
        view = memoryview(buf)
        start = end = 0
        while True:
            if start:  # an unfinished frame moves to the front
                buf[:end - start] = view[start:end]
                start, end = 0, end - start
            got = self.inner.recv_into(view[end:])
            if not got:
                return
            end += got
            batch = []
            while (parsed := self._parse(view, start, end)) is not None:
                payload, start = parsed
                batch.append(payload)
            if batch:
                yield batch

    def _parse(self, view: memoryview, start: int, end: int) -> tuple[memoryview, int] | None:
        """The DATA payload of the whole frame at ``start`` and where the next
        one starts, or None while the frame is incomplete."""
        if end - start < 2:
            return None
        masked, length = view[start + 1] & 0x80, view[start + 1] & 0x7F
        if view[start] != 0x82 or bool(masked) == self.client:
            raise ConnectionError("not a binary frame masked as RFC 6455 requires")
        size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)
        if end - start < size:
            return None
        if length >= 126:
            length = int.from_bytes(view[start + 2:start + size - (4 if masked else 0)], "big")
        if length > self.header_size + self.payload:
            raise ConnectionError("websocket frame too large for a tunnel DATA frame")
        if end - start < size + length:
            return None
        frame = view[start + size:start + size + length]
        if masked:
            frame = memoryview(self.apply_mask(frame, view[start + size - 4:start + size]))
        if frame[0] != self.data_type:
            raise ConnectionError("not a tunnel DATA frame")
        return frame[self.header_size:], start + size + length


def pyopenssl_missing() -> str | None:
    """Why the pyOpenSSL floor cannot run here, or None."""
    try:
        import OpenSSL  # noqa: F401
    except ImportError:
        return "pyOpenSSL not installed (pip install pyopenssl)"
    return None


def _pump(src: _End, dst: _End) -> None:
    try:
        for parts in src.batches() if isinstance(src, _Websocket) else _batches(src):
            dst.send_parts(parts)
        dst.close_write()
    except OSError:
        pass  # the other side went away (or broke the framing): this connection is over


def _hop(listen: socket.socket, upstream_port: int, kind_in: str, kind_out: str,
         tls_lib: str, state: Path, io: str = "threads", framing: str = "none") -> None:
    """Serve connections forever: each one is piped both ways to the upstream."""
    from certs import client_ssl_context, server_ssl_context
    from certs.authority import IssuedCertificate

    ca_pem = (state / "ca.crt").read_bytes()
    leaf = IssuedCertificate((state / "hop-leaf.crt").read_bytes(),
                             (state / "hop.key").read_bytes(), ca_pem)
    server_ctx, client_ctx = server_ssl_context(leaf), client_ssl_context(ca_pem)
    if io == "asyncio":
        asyncio.run(_hop_asyncio(listen, upstream_port, kind_in, kind_out, server_ctx, client_ctx))
        return

    # A hop with one plain side stands where arc-proxy or the agent stands:
    # the websocket's client on its TLS leg; the relay serves both legs.
    ws_client = "plain" in (kind_in, kind_out)
    stream_ids = iter(range(1, 2**31, 2))

    def end(sock: socket.socket, kind: str, server: bool) -> _End:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == "plain":
            return _Plain(sock)
        tls: _End
        if tls_lib == "pyopenssl":
            tls = _PyOpenSslTls(sock, state, server)
        else:
            tls = _StdlibTls(sock, server_ctx if server else client_ctx, server)
        if framing == "ws":
            return _Websocket(tls, ws_client, next(stream_ids))
        return tls

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                down_end = end(conn, kind_in, True)  # no upstream for a failed handshake
            except Exception:  # ssl.SSLError, OpenSSL.SSL.Error, OSError: this connection only
                return
            with socket.create_connection(("127.0.0.1", upstream_port)) as up:
                try:
                    up_end = end(up, kind_out, False)
                except Exception:  # as above
                    return
                back = threading.Thread(target=_pump, args=(up_end, down_end), daemon=True)
                back.start()
                _pump(down_end, up_end)
                back.join()

    while True:
        conn, _ = listen.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class _AsyncPump(asyncio.Protocol):
    """One side of an asyncio hop: what it receives its peer's transport
    writes; each side's write buffer pauses the other side's reading."""

    def __init__(self, on_made: Callable[[_AsyncPump], None] | None = None) -> None:
        self.on_made = on_made
        self.transport: Any = None
        self.peer: _AsyncPump | None = None
        self.early: list[bytes] = []  # received before the upstream was connected
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        # A TLS transport cannot half-close (the sink does not need it).
        if self.peer is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.transport.close()


async def _hop_asyncio(listen: socket.socket, upstream_port: int, kind_in: str, kind_out: str,
                       server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """The same hop on asyncio's transports (its TLS is ``sslproto``)."""
    loop = asyncio.get_running_loop()
    joining: set[asyncio.Task[None]] = set()

    async def join(down: _AsyncPump) -> None:
        up = _AsyncPump()
        try:
            await loop.create_connection(
                lambda: up, "127.0.0.1", upstream_port,
                ssl=client_ctx if kind_out == "tls" else None,
                server_hostname="localhost" if kind_out == "tls" else None)
        except OSError:
            down.transport.close()
            return
        down.peer, up.peer = up, down
        for chunk in down.early:
            up.transport.write(chunk)
        down.early.clear()
        if down.eof and up.transport.can_write_eof():
            up.transport.write_eof()
        down.transport.resume_reading()

    def accepted(down: _AsyncPump) -> None:
        down.transport.pause_reading()  # until the upstream is there
        task = loop.create_task(join(down))
        joining.add(task)
        task.add_done_callback(joining.discard)

    server = await loop.create_server(lambda: _AsyncPump(accepted), sock=listen,
                                      ssl=server_ctx if kind_in == "tls" else None)
    await server.serve_forever()


def state_dir(work: Path, tls_lib: str, io: str, framing: str) -> Path:
    """Where ``start_floor`` keeps one floor path's certificates and ports."""
    return work / f"floor-{tls_lib}-{io}-{framing}"


def start_floor(work: Path, sink_port: int, tls_lib: str = "stdlib", io: str = "threads",
                framing: str = "none", hops: tuple[tuple[str, str, str], ...] = HOPS,
                ) -> tuple[list[subprocess.Popen[bytes]], int, dict[str, int]]:
    """Start ``hops`` (default C, B, A) in front of the sink, sink side first
    (each one's port is written to ``NAME.port`` in ``state_dir(...)``).

    Returns:
        The processes, the port to send to (hop A), and each hop's pid by name.
    """
    from certs import CertificateAuthority

    if framing == "ws" and io != "threads":
        raise ValueError("the websocket-framed floor runs on threads only")
    state = state_dir(work, tls_lib, io, framing)
    if hops != HOPS:
        state = state.with_name(state.name + "-" + "".join(name for name, _, _ in hops))
    state.mkdir()
    ca = CertificateAuthority.create("bench floor CA")
    leaf = ca.issue_server(["localhost"], ["127.0.0.1"])
    (state / "ca.crt").write_bytes(ca.certificate_pem)
    (state / "hop-leaf.crt").write_bytes(leaf.certificate_pem)
    (state / "hop.crt").write_bytes(leaf.chain_pem)
    (state / "hop.key").write_bytes(leaf.private_key_pem)
    procs: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {}
    port = sink_port
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, kind_in, kind_out in hops:
        listen = socket.create_server(("127.0.0.1", 0))
        with listen, open(state / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.floor", "--fd", str(listen.fileno()),
                 "--upstream-port", str(port), "--in", kind_in, "--out", kind_out,
                 "--tls", tls_lib, "--io", io, "--framing", framing, "--state", str(state)],
                pass_fds=[listen.fileno()], stdout=log, stderr=subprocess.STDOUT, env=env)
            port = int(listen.getsockname()[1])
        (state / f"{name}.port").write_text(str(port))
        procs.append(proc)
        pids[name] = proc.pid
    return procs, port, pids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fd", type=int, required=True, help="listening socket (inherited)")
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--in", dest="kind_in", choices=["plain", "tls"], required=True)
    p.add_argument("--out", dest="kind_out", choices=["plain", "tls"], required=True)
    p.add_argument("--tls", choices=["stdlib", "pyopenssl"], default="stdlib")
    p.add_argument("--io", choices=["threads", "asyncio"], default="threads")
    p.add_argument("--framing", choices=["none", "ws"], default="none")
    p.add_argument("--state", type=Path, required=True)
    args = p.parse_args(argv)
    from tunnel.aio import tune_allocator

    tune_allocator()
    listen = socket.socket(fileno=args.fd)
    _hop(listen, args.upstream_port, args.kind_in, args.kind_out, args.tls, args.state, args.io,
         args.framing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
