"""Frame codec: round trips, per-type checks, reason encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.errors import ErrorCode, LocalProtocolError
from tunnel.frames import (
    HEADER_SIZE,
    Frame,
    FrameType,
    data_header,
    decode_error_code,
    encode_reason,
)
from tunnel.limits import (
    MAX_REASON_LENGTH,
    MAX_RECEIVE_PAYLOAD,
    MAX_STREAM_ID,
    MAX_TARGET_LENGTH,
    MAX_WINDOW_SIZE,
)

stream_ids = st.integers(min_value=1, max_value=MAX_STREAM_ID)
codes = st.sampled_from(list(ErrorCode))
reasons = st.text(max_size=100)
ping_payloads = st.binary(min_size=8, max_size=8)

# One strategy per frame type, built only through the public constructors.
frames = st.one_of(
    st.builds(Frame.data, stream_ids, st.binary(max_size=2048)),
    st.builds(Frame.open, stream_ids, st.binary(min_size=1, max_size=MAX_TARGET_LENGTH)),
    st.builds(Frame.open_ok, stream_ids),
    st.builds(
        Frame.window,
        st.integers(min_value=0, max_value=MAX_STREAM_ID),
        st.integers(min_value=1, max_value=MAX_WINDOW_SIZE),
    ),
    st.builds(Frame.fin, stream_ids),
    st.builds(Frame.reset, stream_ids, codes, reasons),
    st.builds(Frame.ping, ping_payloads),
    st.builds(Frame.pong, ping_payloads),
    st.builds(Frame.goaway, st.integers(min_value=0, max_value=MAX_STREAM_ID), codes, reasons),
)


@given(frames)
def test_frame_parse_inverts_serialize(frame: Frame) -> None:
    """parse(serialize(f)) == f for every frame type the constructors can build."""
    assert Frame.parse(frame.serialize()) == frame


@given(stream_ids, st.binary(max_size=MAX_RECEIVE_PAYLOAD))
def test_data_header_matches_frame_serialize(stream_id: int, payload: bytes) -> None:
    """The DATA hot path's header + payload equals the Frame codec's bytes."""
    assert data_header(stream_id) + payload == Frame.data(stream_id, payload).serialize()


@given(stream_ids, codes, reasons)
def test_reset_accessors_read_back_fields(stream_id: int, code: ErrorCode, reason: str) -> None:
    """RESET exposes its code and (possibly cut) reason through accessors."""
    frame = Frame.parse(Frame.reset(stream_id, code, reason).serialize())
    assert frame.error_code is code
    assert frame.reason == encode_reason(reason).decode("utf-8")


@given(st.integers(min_value=0, max_value=MAX_STREAM_ID), codes, reasons)
def test_goaway_accessors_read_back_fields(last: int, code: ErrorCode, reason: str) -> None:
    """GOAWAY exposes last stream id, code and reason through accessors."""
    frame = Frame.parse(Frame.goaway(last, code, reason).serialize())
    assert (frame.last_stream_id, frame.error_code) == (last, code)
    assert frame.reason == encode_reason(reason).decode("utf-8")


@given(st.text(min_size=0, max_size=400))
def test_encode_reason_caps_length_on_character_boundary(reason: str) -> None:
    """Reasons are cut to MAX_REASON_LENGTH bytes and always decode as UTF-8."""
    raw = encode_reason(reason)
    assert len(raw) <= MAX_REASON_LENGTH
    decoded = raw.decode("utf-8")
    assert reason.encode("utf-8", "replace").decode("utf-8").startswith(decoded)


def test_encode_reason_keeps_multibyte_characters_whole() -> None:
    """A cut in the middle of a 3-byte character drops the whole character."""
    raw = encode_reason("€" * 200)  # 600 bytes
    assert len(raw) == 255 and raw.decode("utf-8") == "€" * 85


def test_decode_error_code_maps_unknown_to_internal_error() -> None:
    """Codes from a newer peer do not trigger special handling."""
    assert decode_error_code(0x0B) is ErrorCode.CONNECT_FAILED
    assert decode_error_code(0xDEAD) is ErrorCode.INTERNAL_ERROR


def test_frame_flags_are_preserved_on_receipt() -> None:
    """Reserved flags are ignored by the core but survive the codec."""
    message = bytes([FrameType.FIN, 0x80, 0, 0, 0, 1])
    frame = Frame.parse(message)
    assert frame.flags == 0x80 and frame.serialize() == message


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame(FrameType.DATA, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
        (Frame(FrameType.OPEN, 1, b""), ErrorCode.FRAME_SIZE_ERROR),
        (Frame(FrameType.OPEN, 1, b"x" * (MAX_TARGET_LENGTH + 1)), ErrorCode.FRAME_SIZE_ERROR),
        (Frame(FrameType.PING, 1, bytes(8)), ErrorCode.PROTOCOL_ERROR),
        (Frame(FrameType.PING, 0, bytes(7)), ErrorCode.FRAME_SIZE_ERROR),
        (Frame.window(0, 0), ErrorCode.PROTOCOL_ERROR),
        (Frame.window(0, MAX_WINDOW_SIZE + 1), ErrorCode.FLOW_CONTROL_ERROR),
        (Frame(FrameType.FIN, MAX_STREAM_ID + 1), ErrorCode.PROTOCOL_ERROR),
        (Frame(FrameType.RESET, 1, bytes(4 + MAX_REASON_LENGTH + 1)), ErrorCode.FRAME_SIZE_ERROR),
        (Frame(FrameType.DATA, 1, bytes(MAX_RECEIVE_PAYLOAD + 1)), ErrorCode.FRAME_SIZE_ERROR),
        (Frame(FrameType.FIN, 1, flags=256), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_frame_check_rejects_rule_breaks_with_code(frame: Frame, code: ErrorCode) -> None:
    """check() (and so serialize()) refuses each broken rule with its wire code."""
    with pytest.raises(LocalProtocolError) as info:
        frame.serialize()
    assert info.value.error_code is code


def test_frame_parse_honours_a_larger_configured_payload_cap() -> None:
    """max_payload above the protocol guarantee accepts bigger DATA."""
    message = data_header(1) + bytes(MAX_RECEIVE_PAYLOAD + 10)
    assert len(Frame.parse(message, max_payload=2 * MAX_RECEIVE_PAYLOAD).payload) == (
        len(message) - HEADER_SIZE
    )
    with pytest.raises(LocalProtocolError):
        Frame.parse(message)


def test_frame_summary_is_fixed_width_and_hides_payload() -> None:
    """summary() names type, stream and detail for logs, never payload bytes."""
    assert Frame.window(3, 524288).summary() == "WINDOW  stream=3          +524288"
    assert Frame.data(1, b"secret").summary() == "DATA    stream=1          6B"
    assert Frame.goaway(4, ErrorCode.GOING_AWAY).summary().endswith("last=4 GOING_AWAY")
    assert Frame.reset(5, ErrorCode.CANCEL, "why").summary().endswith("CANCEL")
