"""Unit tests of the SPDY/3.1 codec: dictionary, header blocks, frame vectors."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.streaming.spdy.dictionary import HEADER_DICTIONARY, HEADER_DICTIONARY_ADLER32
from sandbox.streaming.spdy.frames import (
    Data,
    GoAway,
    HeaderCompressor,
    HeaderDecompressor,
    Ping,
    RstStream,
    Settings,
    SpdyConnection,
    SpdyProtocolError,
    SynReply,
    SynStream,
    WindowUpdate,
    decode_header_block,
    encode_header_block,
)


def test_dictionary_has_spdy3_length_and_dictid() -> None:
    """1423 bytes whose Adler-32 is the DICTID SPDY/3 peers put in zlib headers."""
    assert len(HEADER_DICTIONARY) == 1423
    assert zlib.adler32(HEADER_DICTIONARY) == HEADER_DICTIONARY_ADLER32 == 0xE3C6A7C2
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert HEADER_DICTIONARY.endswith(b",utf-,*,enq=0.")


def test_compressor_announces_the_dictionary_in_the_zlib_header() -> None:
    """The first block starts with a zlib header carrying FDICT and the DICTID."""
    block = HeaderCompressor().compress([("streamtype", "error")])
    assert block[1] & 0x20  # FDICT
    assert struct.unpack(">I", block[2:6])[0] == HEADER_DICTIONARY_ADLER32


def test_header_block_encodes_counts_lengths_and_nul_joined_values() -> None:
    """Pairs are counted per distinct name; repeated names are NUL-joined."""
    raw = encode_header_block([("A", "1"), ("b", "2"), ("a", "3")])
    assert raw == (b"\x00\x00\x00\x02" + b"\x00\x00\x00\x01a\x00\x00\x00\x031\x003"
                   + b"\x00\x00\x00\x01b\x00\x00\x00\x012")
    assert decode_header_block(raw) == [("a", "1"), ("a", "3"), ("b", "2")]


_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
_value = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                 max_size=50)


@given(st.lists(st.lists(st.tuples(_name, _value), max_size=6), min_size=1, max_size=5))
def test_header_blocks_round_trip_through_shared_zlib_streams(blocks: list) -> None:
    """Successive blocks on one connection decompress to what was compressed."""
    comp, decomp = HeaderCompressor(), HeaderDecompressor()
    for headers in blocks:
        merged: dict[str, list[str]] = {}
        for n, v in headers:
            merged.setdefault(n, []).append(v)
        expected = [(n, v) for n, vs in merged.items() for v in vs]
        assert decomp.decompress(comp.compress(headers)) == expected


@pytest.mark.parametrize(("raw", "frame"), [
    (b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01", Ping(1)),
    (b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x05", RstStream(3, 5)),
    (b"\x80\x03\x00\x07\x00\x00\x00\x08\x00\x00\x00\x07\x00\x00\x00\x00", GoAway(7, 0)),
    (b"\x80\x03\x00\x09\x00\x00\x00\x08\x00\x00\x00\x01\x00\x01\x00\x00",
     WindowUpdate(1, 65536)),
    (b"\x80\x03\x00\x04\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x07\x00\x01\x00\x00",
     Settings([(0, 7, 65536)])),
    (b"\x00\x00\x00\x05\x01\x00\x00\x03abc", Data(5, b"abc", True)),
])
def test_control_and_data_frame_vectors_parse(raw: bytes, frame: object) -> None:
    """Known byte layouts parse to the expected frames, even fed byte by byte."""
    assert SpdyConnection().receive_data(raw) == [frame]
    conn = SpdyConnection()
    got = [f for b in raw for f in conn.receive_data(bytes([b]))]
    assert got == [frame]


def test_serializer_writes_the_same_vectors() -> None:
    """send_* produce the layouts the parser reads."""
    conn = SpdyConnection()
    conn.send_ping(1)
    conn.send_rst_stream(3, 5)
    conn.send_goaway(7)
    conn.send_data(5, b"abc", fin=True)
    assert conn.data_to_send() == (
        b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
        b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x05"
        b"\x80\x03\x00\x07\x00\x00\x00\x08\x00\x00\x00\x07\x00\x00\x00\x00"
        b"\x00\x00\x00\x05\x01\x00\x00\x03abc")


def test_syn_stream_and_reply_round_trip_between_two_connections() -> None:
    """A client SYN_STREAM and a server SYN_REPLY decode on the other side."""
    client, server = SpdyConnection(), SpdyConnection()
    client.send_syn_stream(1, [("streamType", "stdin")], fin=False, priority=0)
    client.send_syn_stream(3, [("streamType", "stdout")], fin=True)
    frames = server.receive_data(client.data_to_send())
    assert frames == [SynStream(1, 0, 0, [("streamtype", "stdin")], False, False),
                      SynStream(3, 0, 0, [("streamtype", "stdout")], True, False)]
    server.send_syn_reply(1, [])
    assert client.receive_data(server.data_to_send()) == [SynReply(1, [], False)]


def test_large_data_is_split_into_32k_frames() -> None:
    """DATA frames stay at 32 KiB; FIN only on the last."""
    conn = SpdyConnection()
    conn.send_data(1, b"x" * 70_000, fin=True)
    frames = SpdyConnection().receive_data(conn.data_to_send())
    assert [len(f.data) for f in frames] == [32768, 32768, 70_000 - 65536]
    assert [f.fin for f in frames] == [False, False, True]


@pytest.mark.parametrize("raw", [
    b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01",  # SPDY/2
    b"\x80\x03\x00\x63\x00\x00\x00\x00",  # unknown control type
    b"\x80\x03\x00\x02\x00\x00\x00\x06\x00\x00\x00\x01\xff\xff",  # bad zlib
])
def test_invalid_frames_raise_protocol_errors(raw: bytes) -> None:
    """Wrong version, unknown types and broken header blocks are protocol errors."""
    with pytest.raises(SpdyProtocolError):
        SpdyConnection().receive_data(raw)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(raw: bytes) -> None:
    """Garbage never raises anything but SpdyProtocolError."""
    try:
        SpdyConnection().receive_data(raw)
    except SpdyProtocolError:
        pass
