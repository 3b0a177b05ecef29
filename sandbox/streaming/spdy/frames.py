"""SPDY/3.1 frames, sans-I/O: what spdystream (kubectl's SPDY library) sends
and understands.

Layout (big-endian) per moby/spdystream ``spdy/types.go``/``read.go``/``write.go``:
control frames ``1|version(15)=3|type(16)|flags(8)|length(24)|payload``; data
frames ``0|stream id(31)|flags(8)|length(24)|data``. Header blocks are zlib
streams (one per direction per connection, sync-flushed per frame) primed with
``HEADER_DICTIONARY``. spdystream does no flow control, so neither do we:
SETTINGS and WINDOW_UPDATE are parsed and ignored.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from sandbox.streaming.spdy.dictionary import HEADER_DICTIONARY

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN, FLAG_UNIDIRECTIONAL = 0x01, 0x02
# RST_STREAM status codes (spdystream types.go).
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL = 1, 2, 3, 5
INTERNAL_ERROR, STREAM_IN_USE, STREAM_ALREADY_CLOSED = 6, 8, 9
# The 24-bit length field allows 16 MiB; a decompressed header block larger
# than this is an attack, not kubectl.
MAX_FRAME_LENGTH = (1 << 24) - 1
MAX_HEADER_BLOCK = 1 << 20
# Keep DATA frames small: spdystream reads them whole into memory.
MAX_DATA_CHUNK = 32 * 1024

Headers = list[tuple[str, str]]


class SpdyProtocolError(Exception):
    """The peer sent something that is not valid SPDY/3.1."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    associated_id: int
    priority: int
    headers: Headers
    fin: bool
    unidirectional: bool


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: list[tuple[int, int, int]]  # (flags, id, value)


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool


Frame = (SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame
         | WindowUpdate | Data)


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block; repeated names are NUL-joined."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(value)
    out = [struct.pack(">I", len(merged))]
    for name, values in merged.items():
        n, v = name.encode(), "\0".join(values).encode()
        out.append(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v)
    return b"".join(out)


def decode_header_block(raw: bytes) -> Headers:
    """Parse an uncompressed name/value block."""
    try:
        (count,) = struct.unpack_from(">I", raw, 0)
        pos = 4
        headers: Headers = []
        for _ in range(count):
            (n,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
            (v,) = struct.unpack_from(">I", raw, pos)
            value = raw[pos + 4:pos + 4 + v].decode()
            pos += 4 + v
            if pos > len(raw):
                raise SpdyProtocolError("header block truncated")
            headers.extend((name.lower(), part) for part in value.split("\0"))
        return headers
    except (struct.error, UnicodeDecodeError) as exc:
        raise SpdyProtocolError("malformed header block") from exc


class HeaderCompressor:
    """Our direction's zlib stream."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                   zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        raw = encode_header_block(headers)
        return self._z.compress(raw) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The peer's zlib stream."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zdict=HEADER_DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise SpdyProtocolError("header block does not inflate") from exc
        if self._z.unconsumed_tail:
            raise SpdyProtocolError("header block too large")
        return decode_header_block(raw)


def _control(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


class SpdyConnection:
    """Frame parser and serializer for one connection, either side.

    Feed bytes with ``receive_data`` (returns parsed frames); queue frames with
    the ``send_*`` methods and write out ``data_to_send()``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()

    def receive_data(self, data: bytes) -> list[Frame]:
        """Parse every complete frame in the bytes received so far."""
        self._buf += data
        frames: list[Frame] = []
        buf, pos, end = self._buf, 0, len(self._buf)
        while end - pos >= 8:
            first, second = struct.unpack_from(">II", buf, pos)
            length = second & 0xFFFFFF
            flags = second >> 24
            if end - pos - 8 < length:
                break
            payload = bytes(buf[pos + 8:pos + 8 + length])
            pos += 8 + length
            if first & 0x80000000:
                version = (first >> 16) & 0x7FFF
                if version != VERSION:
                    raise SpdyProtocolError(f"unsupported SPDY version {version}")
                frame = self._parse_control(first & 0xFFFF, flags, payload)
                if frame is not None:
                    frames.append(frame)
            else:
                frames.append(Data(first & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN)))
        del buf[:pos]
        return frames

    def _parse_control(self, ftype: int, flags: int, p: bytes) -> Frame | None:
        try:
            if ftype == SYN_STREAM:
                sid, assoc = struct.unpack_from(">II", p, 0)
                return SynStream(sid & 0x7FFFFFFF, assoc & 0x7FFFFFFF, p[8] >> 5,
                                 self._decompressor.decompress(p[10:]),
                                 bool(flags & FLAG_FIN), bool(flags & FLAG_UNIDIRECTIONAL))
            if ftype in (SYN_REPLY, HEADERS):
                (sid,) = struct.unpack_from(">I", p, 0)
                headers = self._decompressor.decompress(p[4:])
                cls = SynReply if ftype == SYN_REPLY else HeadersFrame
                return cls(sid & 0x7FFFFFFF, headers, bool(flags & FLAG_FIN))
            if ftype == RST_STREAM:
                sid, status = struct.unpack_from(">II", p, 0)
                return RstStream(sid & 0x7FFFFFFF, status)
            if ftype == SETTINGS:
                (n,) = struct.unpack_from(">I", p, 0)
                entries = []
                for i in range(n):
                    fid, value = struct.unpack_from(">II", p, 4 + 8 * i)
                    entries.append((fid >> 24, fid & 0xFFFFFF, value))
                return Settings(entries)
            if ftype == PING:
                return Ping(struct.unpack_from(">I", p, 0)[0])
            if ftype == GOAWAY:
                last, status = struct.unpack_from(">II", p, 0) if len(p) >= 8 else (
                    struct.unpack_from(">I", p, 0)[0], 0)
                return GoAway(last & 0x7FFFFFFF, status)
            if ftype == WINDOW_UPDATE:
                sid, delta = struct.unpack_from(">II", p, 0)
                return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        except (struct.error, IndexError) as exc:
            raise SpdyProtocolError(f"short control frame type {ftype}") from exc
        # spdystream fails the connection on unknown types; we do the same.
        raise SpdyProtocolError(f"unknown control frame type {ftype}")

    def data_to_send(self) -> bytes:
        """Everything queued since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send_syn_stream(self, stream_id: int, headers: Headers, fin: bool = False,
                        priority: int = 0) -> None:
        block = self._compressor.compress(headers)
        payload = struct.pack(">IIBB", stream_id, 0, (priority & 7) << 5, 0) + block
        self._out.append(_control(SYN_STREAM, FLAG_FIN if fin else 0, payload))

    def send_syn_reply(self, stream_id: int, headers: Headers, fin: bool = False) -> None:
        block = self._compressor.compress(headers)
        self._out.append(_control(SYN_REPLY, FLAG_FIN if fin else 0,
                                  struct.pack(">I", stream_id) + block))

    def send_rst_stream(self, stream_id: int, status: int) -> None:
        self._out.append(_control(RST_STREAM, 0, struct.pack(">II", stream_id, status)))

    def send_ping(self, ping_id: int) -> None:
        self._out.append(_control(PING, 0, struct.pack(">I", ping_id)))

    def send_goaway(self, last_good_stream_id: int, status: int = 0) -> None:
        self._out.append(_control(GOAWAY, 0, struct.pack(">II", last_good_stream_id, status)))

    def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """Queue DATA frames of at most ``MAX_DATA_CHUNK`` bytes each."""
        view = memoryview(data)
        for i in range(0, max(len(view), 1), MAX_DATA_CHUNK):
            chunk = view[i:i + MAX_DATA_CHUNK]
            last = i + MAX_DATA_CHUNK >= len(view)
            flags = FLAG_FIN if (fin and last) else 0
            self._out.append(struct.pack(">II", stream_id & 0x7FFFFFFF,
                                         (flags << 24) | len(chunk)))
            self._out.append(bytes(chunk))
