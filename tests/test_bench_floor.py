"""bench/floor.py: the floor path moves every byte, both ways, through real TLS hops.

Its figures are only worth comparing if it does the work it stands for: three
processes, two TLS legs with verified certificates, bytes intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import e2e, floor
from tests.support.servers import threaded_tcp_server


def _digest_server(seen: list[str]) -> Callable[[socket.socket], None]:
    """Like the benchmark's sink, reads an 8-byte length and then that many
    bytes (or up to EOF); answers their SHA-256 and notes it in ``seen``."""

    def serve(conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rb")
            announced = f.read(8)
            want = int.from_bytes(announced, "big") if len(announced) == 8 else 0
            h = hashlib.sha256()
            while want and (chunk := f.read1(min(want, 1 << 16))):
                h.update(chunk)
                want -= len(chunk)
            seen.append(h.hexdigest())
            conn.sendall(h.digest())

    return serve


@pytest.mark.parametrize(("tls_lib", "io", "framing"), [
    ("stdlib", "threads", "none"), ("pyopenssl", "threads", "none"),
    ("stdlib", "asyncio", "none"), ("stdlib", "threads", "ws"), ("pyopenssl", "threads", "ws")])
def test_floor_path_carries_bytes_intact_both_ways(
        tmp_path: Path, tls_lib: str, io: str, framing: str) -> None:
    if tls_lib == "pyopenssl" and (why := floor.pyopenssl_missing()):
        pytest.skip(why)
    seen: list[str] = []
    with threaded_tcp_server(_digest_server(seen)) as sink_port:
        _run_floor(tmp_path, tls_lib, io, framing, sink_port, seen)


def _send(port: int, payload: bytes) -> bytes:
    """Send one length-prefixed payload into the floor path; its SHA-256 comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(len(payload).to_bytes(8, "big") + payload)
        answer = b""
        while len(answer) < 32 and (part := s.recv(32 - len(answer))):
            answer += part
    return answer


def _run_floor(tmp_path: Path, tls_lib: str, io: str, framing: str, sink_port: int,
               seen: list[str]) -> None:
    procs, port, pids = floor.start_floor(tmp_path, sink_port, tls_lib, io, framing)
    try:
        assert set(pids) == {"A", "B", "C"} and len(set(pids.values())) == 3
        payload = os.urandom(3 * 1024 * 1024 + 17)  # not a multiple of any buffer
        answer = _send(port, payload)
        assert answer == hashlib.sha256(payload).digest()  # the reverse direction works too
        assert seen == [hashlib.sha256(payload).hexdigest()]
        # Hop C's side towards B is TLS with the floor CA's certificate, and
        # plaintext sent there is refused, not passed on to the sink.
        state = floor.state_dir(tmp_path, tls_lib, io, framing)
        c_port = int((state / "C.port").read_text())
        ctx = ssl.create_default_context(cafile=str(state / "ca.crt"))
        with socket.create_connection(("127.0.0.1", c_port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        plaintext = b"GET / HTTP/1.1\r\n\r\n" * 100
        with socket.create_connection(("127.0.0.1", c_port), timeout=30) as raw:
            raw.sendall(plaintext)
            raw.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionError):
                while raw.recv(4096):
                    pass
        # A later payload through the whole path, answered after hop C closed
        # the plaintext probe: the sink has seen whatever C passed on by then.
        later = os.urandom(1000)
        assert _send(port, later) == hashlib.sha256(later).digest()
        # (The TLS probe may reach the sink as an empty connection.)
        assert hashlib.sha256(plaintext).hexdigest() not in seen
        assert seen.count(hashlib.sha256(payload).hexdigest()) == 1
        assert seen.count(hashlib.sha256(later).hexdigest()) == 1
        assert set(seen) <= {hashlib.sha256(payload).hexdigest(), hashlib.sha256(later).hexdigest(),
                             hashlib.sha256(b"").hexdigest()}
    finally:
        e2e._stop(procs)


class _Collect:
    """A TLS end that keeps what is sent and hands it back when read."""

    def __init__(self) -> None:
        self.wire = bytearray()
        self.at = 0

    def send_parts(self, parts: list[bytes | memoryview]) -> None:
        for part in parts:
            self.wire += part

    def recv_into(self, buf: bytearray | memoryview) -> int:
        n = min(len(buf), len(self.wire) - self.at, 7000)  # cut frames anywhere
        buf[:n] = self.wire[self.at:self.at + n]
        self.at += n
        return n


@pytest.mark.parametrize("client", [True, False])
def test_floor_websocket_framing_is_rfc6455_with_tunnel_data_frames(client: bool) -> None:
    """What the websocket-framed floor writes is what a real websocket peer
    reads: binary frames, masked only by the client, each holding one tunnel
    DATA frame of at most the adapter's payload; and it reads them back."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from tunnel.aio import ADAPTER_SEND_PAYLOAD
    from tunnel.frames import Frame as TunnelFrame
    from tunnel.frames import FrameType

    wire = _Collect()
    sender = floor._Websocket(wire, client, stream_id=7)
    payload = os.urandom(3 * ADAPTER_SEND_PAYLOAD + 5)
    sender.send(memoryview(payload))

    reader = StreamReader()
    reader.feed_data(bytes(wire.wire))
    reader.feed_eof()
    received = b""
    while reader.buffer:
        # mask=True: parse as the server would, i.e. require the client's mask.
        parse = Frame.parse(reader.read_exact, mask=client)
        with pytest.raises(StopIteration) as done:
            next(parse)
        frame = done.value.value
        assert frame.opcode is Opcode.BINARY and frame.fin
        data = TunnelFrame.parse(frame.data)
        assert data.type is FrameType.DATA and data.stream_id == 7
        assert 0 < len(data.payload) <= ADAPTER_SEND_PAYLOAD
        received += data.payload
    assert received == payload
    if client:  # masked: the payload does not travel as itself
        assert payload[:64] not in bytes(wire.wire)

    back = floor._Websocket(wire, not client, stream_id=9)
    assert b"".join(bytes(c) for batch in back.batches() for c in batch) == payload
    # A peer that masks the other way is refused.
    wire.at = 0
    with pytest.raises(ConnectionError):
        list(floor._Websocket(wire, client, stream_id=9).batches())
