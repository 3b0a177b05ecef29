"""Hostile peers: every malformed or out-of-order input ends in a defined error code."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.tunnel.helpers import TunnelPair
from tunnel.connection import Connection
from tunnel.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel.events import DataReceived, Event, StreamReset
from tunnel.frames import Frame, FrameType
from tunnel.limits import (
    CLOSED_STREAM_MEMORY,
    INITIAL_SESSION_WINDOW,
    INITIAL_STREAM_WINDOW,
    MAX_RECEIVE_PAYLOAD,
    MAX_WINDOW_SIZE,
    Limits,
)
from tunnel.state import STREAM_TRANSITIONS, StreamInput, StreamState
from tunnel.windows import WindowManager

# Bound on what one received message may make the core queue (e.g. RESET + WINDOW,
# or WINDOW + GOAWAY): output never grows faster than input.
MAX_OUTPUT_PER_MESSAGE = 3


def _expect_session_error(conn: Connection, message: bytes, code: ErrorCode) -> None:
    """Feed ``message``; assert RemoteProtocolError(code) and a GOAWAY(code) queued last."""
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive(message)
    assert info.value.error_code is code
    goaway = Frame.parse(conn.data_to_send()[-1])
    assert goaway.type is FrameType.GOAWAY and goaway.error_code is code
    assert goaway.reason == ""  # never exception text on the wire
    assert conn.closed and conn.open_stream_count == 0


def _expect_stream_reset(conn: Connection, message: bytes, stream_id: int, code: ErrorCode) -> None:
    """Feed ``message``; assert the stream is reset with ``code`` and the session lives."""
    events = conn.receive(message)
    assert events == [StreamReset(stream_id, code, "")]
    resets = [Frame.parse(m) for m in conn.data_to_send()]
    assert Frame.reset(stream_id, code) in resets
    assert not conn.closed


def _accepted(pair: TunnelPair) -> int:
    sid = pair.client.open_stream(b"t")
    pair.deliver(pair.server)
    pair.server.accept_stream(sid)
    pair.deliver(pair.client)
    return sid


# --- fuzzing ---------------------------------------------------------------------

messages = st.lists(st.binary(max_size=80), max_size=30)


@given(messages, st.booleans())
def test_hostile_random_bytes_raise_only_remote_protocol_error(
    batch: list[bytes], is_client: bool
) -> None:
    """Arbitrary messages produce events or RemoteProtocolError, never another type,
    and the error always leaves a GOAWAY with its code queued."""
    conn = Connection(is_client=is_client)
    for message in batch:
        try:
            conn.receive(message)
        except RemoteProtocolError as exc:
            goaway = Frame.parse(conn.data_to_send()[-1])
            assert goaway.type is FrameType.GOAWAY and goaway.error_code is exc.error_code
            break
        assert len(conn.data_to_send()) <= MAX_OUTPUT_PER_MESSAGE


header_fields = st.tuples(
    st.integers(min_value=0, max_value=10),  # mostly known types, some unknown
    st.sampled_from([0, 0, 0, 1, 0x80]),
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 99, 2**31 - 1, 2**31, 2**32 - 1]),
)
payloads = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"", bytes(4), b"\x00\x00\x00\x01", b"\x7f\xff\xff\xff", bytes(8)]),
    st.integers(min_value=0, max_value=2 * INITIAL_STREAM_WINDOW).map(lambda n: bytes(n % 70000)),
)


@given(st.lists(st.tuples(header_fields, payloads), max_size=40))
def test_hostile_frame_shaped_input_keeps_memory_bounded(
    frames: list[tuple[tuple[int, int, int], bytes]],
) -> None:
    """Well-framed but hostile sequences on a live session: only RemoteProtocolError,
    bounded output per message, bounded stream table and reset memory."""
    limits = Limits(max_concurrent_streams=4)
    pair = TunnelPair(limits)
    _accepted(pair)
    server = pair.server
    server.data_to_send()
    for (ftype, flags, sid), payload in frames:
        message = struct.pack("!BBI", ftype, flags, sid) + payload
        try:
            events = server.receive(message)
        except RemoteProtocolError:
            assert server.closed
            break
        for event in events:
            if isinstance(event, DataReceived):
                server.acknowledge_received_data(event.stream_id, len(event.data))
        assert len(server.data_to_send()) <= MAX_OUTPUT_PER_MESSAGE
        assert server.open_stream_count <= limits.max_concurrent_streams + 1
        assert len(server._reset_by_us) <= CLOSED_STREAM_MEMORY


# --- every (stream state, received frame) pair through a real Connection ------------


def _server_stream_in(state: StreamState) -> tuple[TunnelPair, int]:
    """A pair whose server side holds one stream in ``state`` (CLOSED: awaiting acks)."""
    pair = TunnelPair()
    if state is StreamState.OPEN_SENT:
        sid = pair.server.open_stream(b"t")
        pair.server.data_to_send()
        return pair, sid
    sid = pair.client.open_stream(b"t")
    pair.deliver(pair.server)
    if state is StreamState.OPEN_RECEIVED:
        return pair, sid
    pair.server.accept_stream(sid)
    pair.deliver(pair.client)
    if state is StreamState.HALF_CLOSED_LOCAL:
        pair.server.send_fin(sid)
    elif state is StreamState.HALF_CLOSED_REMOTE:
        pair.client.send_fin(sid)
        pair.deliver(pair.server)
    elif state is StreamState.CLOSED:
        pair.client.send_data(sid, b"unread")
        pair.client.send_fin(sid)
        pair.deliver(pair.server)
        pair.server.send_fin(sid)
    pair.server.data_to_send()
    assert pair.server.stream_state(sid) is state
    return pair, sid


_INPUT_OF = {
    FrameType.DATA: StreamInput.RECV_DATA,
    FrameType.OPEN_OK: StreamInput.RECV_OPEN_OK,
    FrameType.WINDOW: StreamInput.RECV_WINDOW,
    FrameType.FIN: StreamInput.RECV_FIN,
    FrameType.RESET: StreamInput.RECV_RESET,
}


def _frame_for(ftype: FrameType, sid: int) -> Frame:
    return {
        FrameType.DATA: Frame.data(sid, b"x"),
        FrameType.OPEN: Frame.open(sid, b"again"),
        FrameType.OPEN_OK: Frame.open_ok(sid),
        FrameType.WINDOW: Frame.window(sid, 1),
        FrameType.FIN: Frame.fin(sid),
        FrameType.RESET: Frame.reset(sid, ErrorCode.CANCEL),
    }[ftype]


@given(
    st.sampled_from([s for s in StreamState if s is not StreamState.IDLE]),
    st.sampled_from([*_INPUT_OF, FrameType.OPEN]),
)
def test_hostile_every_stream_state_and_frame_pair_has_defined_outcome(
    state: StreamState, ftype: FrameType
) -> None:
    """Table rows are accepted silently; other pairs reset the stream (live stream),
    are answered with RESET STREAM_CLOSED or ignored (closed stream), or fail the
    session (OPEN reusing an id)."""
    pair, sid = _server_stream_in(state)
    server = pair.server
    message = _frame_for(ftype, sid).serialize()
    if ftype is FrameType.OPEN:
        _expect_session_error(server, message, ErrorCode.PROTOCOL_ERROR)
        return
    if state is StreamState.CLOSED:
        assert server.receive(message) == []
        queued = [Frame.parse(m) for m in server.data_to_send()]
        if ftype in (FrameType.DATA, FrameType.FIN):
            assert Frame.reset(sid, ErrorCode.STREAM_CLOSED) in queued
        else:
            assert queued == []
        return
    if (state, _INPUT_OF[ftype]) in STREAM_TRANSITIONS:
        events: list[Event] = server.receive(message)
        assert not server.closed
        assert all(Frame.parse(m).type is not FrameType.RESET for m in server.data_to_send())
        assert events
        return
    code = (
        ErrorCode.STREAM_CLOSED
        if state is StreamState.HALF_CLOSED_REMOTE
        else ErrorCode.PROTOCOL_ERROR
    )
    _expect_stream_reset(server, message, sid, code)
    assert server.stream_state(sid) is StreamState.CLOSED


# --- specific attacks ----------------------------------------------------------


@pytest.mark.parametrize("ftype", [9, 0x10, 0x7F, 0xFF])
def test_hostile_unknown_frame_type_is_protocol_error(ftype: int) -> None:
    """Types outside v1 end the session with PROTOCOL_ERROR."""
    _expect_session_error(
        Connection(is_client=True), bytes([ftype, 0, 0, 0, 0, 1]), ErrorCode.PROTOCOL_ERROR
    )


@pytest.mark.parametrize("name", ["window", "reset", "ping", "goaway", "open"])
def test_hostile_truncated_frames_are_frame_size_errors(name: str) -> None:
    """Every truncation of a fixed-layout frame is FRAME_SIZE_ERROR, never a crash."""
    frame = {
        "window": Frame.window(0, 10),
        "reset": Frame.reset(1, ErrorCode.CANCEL),
        "ping": Frame.ping(bytes(8)),
        "goaway": Frame.goaway(0, ErrorCode.NO_ERROR),
        "open": Frame.open(2, b"x"),
    }[name]
    wire = frame.serialize()
    for cut in range(len(wire)):
        _expect_session_error(Connection(is_client=True), wire[:cut], ErrorCode.FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    "frame",
    [Frame.data(1, b"x"), Frame.fin(3), Frame.window(5, 1), Frame.reset(7, ErrorCode.CANCEL)],
    ids=["data", "fin", "window", "reset"],
)
def test_hostile_frames_for_idle_streams_are_protocol_errors(frame: Frame) -> None:
    """A frame for a stream the peer never opened is PROTOCOL_ERROR."""
    _expect_session_error(Connection(is_client=False), frame.serialize(), ErrorCode.PROTOCOL_ERROR)


def test_hostile_open_ok_for_a_stream_we_never_opened_is_protocol_error() -> None:
    """OPEN_OK naming one of our ids that we did not open yet is PROTOCOL_ERROR."""
    _expect_session_error(
        Connection(is_client=True), Frame.open_ok(1).serialize(), ErrorCode.PROTOCOL_ERROR
    )


def test_hostile_data_on_a_closed_stream_is_reset_and_credited() -> None:
    """DATA after a stream closed cleanly: RESET STREAM_CLOSED, credit returned."""
    pair = TunnelPair()
    sid = _accepted(pair)
    pair.client.send_fin(sid)
    pair.server.send_fin(sid)
    pair.exchange()
    assert pair.server.stream_state(sid) is StreamState.CLOSED
    assert pair.server.receive(Frame.data(sid, bytes(100)).serialize()) == []
    assert [Frame.parse(m) for m in pair.server.data_to_send()] == [
        Frame.reset(sid, ErrorCode.STREAM_CLOSED)
    ]
    assert pair.server.session_credit_pending == 100


def test_hostile_session_window_overflow_is_flow_control_error() -> None:
    """A session WINDOW pushing our send window past 2**31-1 ends the session."""
    conn = Connection(is_client=True)
    _expect_session_error(
        conn, Frame.window(0, MAX_WINDOW_SIZE).serialize(), ErrorCode.FLOW_CONTROL_ERROR
    )


def test_hostile_stream_window_overflow_resets_the_stream() -> None:
    """A stream WINDOW past 2**31-1 resets that stream only (FLOW_CONTROL_ERROR)."""
    pair = TunnelPair()
    sid = _accepted(pair)
    message = Frame.window(sid, MAX_WINDOW_SIZE).serialize()
    _expect_stream_reset(pair.client, message, sid, ErrorCode.FLOW_CONTROL_ERROR)


def test_hostile_window_increment_above_limit_is_flow_control_error() -> None:
    """A WINDOW increment with the top bit set is FLOW_CONTROL_ERROR by itself."""
    message = bytes([FrameType.WINDOW, 0, 0, 0, 0, 0, 0x80, 0, 0, 0])
    _expect_session_error(Connection(is_client=True), message, ErrorCode.FLOW_CONTROL_ERROR)


def test_hostile_reused_stream_id_is_protocol_error() -> None:
    """An OPEN with an id at or below the peer's last one is PROTOCOL_ERROR."""
    conn = Connection(is_client=False)
    conn.receive(Frame.open(3, b"t").serialize())
    _expect_session_error(conn, Frame.open(1, b"t").serialize(), ErrorCode.PROTOCOL_ERROR)
    conn = Connection(is_client=False)
    conn.receive(Frame.open(1, b"t").serialize())
    conn.reset_stream(1, ErrorCode.CANCEL)
    _expect_session_error(conn, Frame.open(1, b"t").serialize(), ErrorCode.PROTOCOL_ERROR)


def test_hostile_open_with_our_parity_is_protocol_error() -> None:
    """The server opens even ids; an even OPEN from the client is PROTOCOL_ERROR."""
    _expect_session_error(
        Connection(is_client=False), Frame.open(2, b"t").serialize(), ErrorCode.PROTOCOL_ERROR
    )


def test_hostile_too_many_streams_are_reset_and_table_stays_bounded() -> None:
    """OPENs beyond max_concurrent_streams get RESET TOO_MANY_STREAMS; none is kept."""
    conn = Connection(is_client=False, limits=Limits(max_concurrent_streams=2))
    assert len(conn.receive(Frame.open(1, b"t").serialize())) == 1
    assert len(conn.receive(Frame.open(3, b"t").serialize())) == 1
    for sid in range(5, 5 + 2 * 3000, 2):
        assert conn.receive(Frame.open(sid, b"t").serialize()) == []
        assert [Frame.parse(m) for m in conn.data_to_send()][-1] == Frame.reset(
            sid, ErrorCode.TOO_MANY_STREAMS, "too many streams"
        )
    assert conn.open_stream_count == 2
    assert len(conn._reset_by_us) <= CLOSED_STREAM_MEMORY
    conn.reset_stream(1, ErrorCode.CANCEL)
    assert len(conn.receive(Frame.open(10001, b"t").serialize())) == 1  # room again


def test_hostile_oversized_payload_is_frame_size_error() -> None:
    """A DATA payload above max_receive_payload ends the session before any copy."""
    pair = TunnelPair()
    sid = _accepted(pair)
    message = Frame(FrameType.DATA, sid).serialize() + bytes(MAX_RECEIVE_PAYLOAD + 1)
    _expect_session_error(pair.server, message, ErrorCode.FRAME_SIZE_ERROR)


def test_hostile_data_beyond_stream_window_is_flow_control_error() -> None:
    """Sending one byte more than the stream window ends the session."""
    pair = TunnelPair()
    sid = _accepted(pair)
    chunk = Frame.data(sid, bytes(MAX_RECEIVE_PAYLOAD)).serialize()
    for _ in range(INITIAL_STREAM_WINDOW // MAX_RECEIVE_PAYLOAD):
        pair.server.receive(chunk)
    _expect_session_error(
        pair.server, Frame.data(sid, b"x").serialize(), ErrorCode.FLOW_CONTROL_ERROR
    )


def test_hostile_data_on_every_stream_is_bounded_by_stream_windows() -> None:
    """A peer that fills every stream window (more than the session window in
    all) and never reads our WINDOW frames: session credit comes back on
    receipt, so no error, and what we hold is the sum of the stream windows."""
    conn = Connection(is_client=False)
    streams = 2 * INITIAL_SESSION_WINDOW // INITIAL_STREAM_WINDOW
    chunk = bytes(MAX_RECEIVE_PAYLOAD)
    for n in range(streams):
        sid = 2 * n + 1
        conn.receive(Frame.open(sid, b"t").serialize())
        conn.accept_stream(sid)
        for _ in range(INITIAL_STREAM_WINDOW // MAX_RECEIVE_PAYLOAD):
            conn.receive(Frame.data(sid, chunk).serialize())
    held = sum(conn.unacknowledged(2 * n + 1) for n in range(streams))
    assert held == conn.buffered_bound == streams * INITIAL_STREAM_WINDOW
    assert held <= conn.limits.buffer_bound
    assert conn.session_receive_window > 0 and not conn.closed


def test_hostile_data_beyond_session_window_is_flow_control_error() -> None:
    """The session window still bounds bytes in flight: more than we granted
    (counting every WINDOW we queued) in one go ends the session."""
    window = WindowManager(INITIAL_SESSION_WINDOW)
    window.window_consumed(INITIAL_SESSION_WINDOW)
    with pytest.raises(LocalProtocolError) as info:
        window.window_consumed(1)
    assert info.value.error_code is ErrorCode.FLOW_CONTROL_ERROR


def test_hostile_open_after_peer_goaway_is_protocol_error() -> None:
    """The peer said GOAWAY, then opened a stream anyway: PROTOCOL_ERROR."""
    conn = Connection(is_client=True)
    conn.receive(Frame.goaway(0, ErrorCode.NO_ERROR).serialize())
    _expect_session_error(conn, Frame.open(2, b"t").serialize(), ErrorCode.PROTOCOL_ERROR)


def test_hostile_ping_flood_output_is_one_pong_each_and_drains() -> None:
    """Each PING queues exactly one PONG; data_to_send empties the queue."""
    conn = Connection(is_client=True)
    for n in range(1000):
        conn.receive(Frame.ping(n.to_bytes(8, "big")).serialize())
        assert [Frame.parse(m) for m in conn.data_to_send()] == [Frame.pong(n.to_bytes(8, "big"))]


def test_hostile_invalid_utf8_reason_is_replaced_not_fatal() -> None:
    """A RESET reason that is not UTF-8 is read with replacement characters."""
    pair = TunnelPair()
    sid = _accepted(pair)
    message = Frame(FrameType.RESET, sid, struct.pack("!I", 7) + b"\xff\xfe").serialize()
    assert pair.client.receive(message) == [StreamReset(sid, ErrorCode.CANCEL, "\ufffd\ufffd")]


def test_hostile_messages_after_failure_are_ignored() -> None:
    """Once the session failed, further input is dropped, not re-raised."""
    conn = Connection(is_client=True)
    _expect_session_error(conn, b"\x00", ErrorCode.FRAME_SIZE_ERROR)
    assert conn.receive(b"\xff" * 10) == []
    assert conn.data_to_send() == []
