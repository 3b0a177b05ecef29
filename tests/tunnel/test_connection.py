"""Connection behaviour between two in-memory cores: examples, then a stateful model."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from tests.tunnel.helpers import TunnelPair
from tunnel import (
    Connection,
    DataReceived,
    ErrorCode,
    Frame,
    FrameType,
    GoAwayReceived,
    Limits,
    LocalProtocolError,
    PingReceived,
    PongReceived,
    ProtocolError,
    RemoteProtocolError,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamResetEvent,
    StreamState,
)
from tunnel.events import Event
from tunnel.frames import HEADER_SIZE
from tunnel.limits import (
    INITIAL_SESSION_WINDOW,
    INITIAL_STREAM_WINDOW,
    MAX_SEND_PAYLOAD,
)


def _open(pair: TunnelPair, opener: Connection | None = None, target: bytes = b"t") -> int:
    """Open and accept one stream from ``opener`` (default: the client)."""
    opener = opener or pair.client
    acceptor = pair.peer(opener)
    stream_id = opener.open_stream(target)
    assert pair.deliver(acceptor) == [StreamOpened(stream_id, target)]
    acceptor.accept_stream(stream_id)
    assert pair.deliver(opener) == [StreamAccepted(stream_id)]
    return stream_id


def _frames(conn: Connection) -> list[Frame]:
    """Parse everything ``conn`` queued."""
    return [Frame.parse(m) for m in conn.data_to_send()]


def _data(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


# --- examples --------------------------------------------------------------


def test_connection_client_and_server_exchange_bytes_and_close() -> None:
    """Open, accept, data both ways, FIN both ways: the stream is gone on both sides."""
    pair = TunnelPair()
    sid = _open(pair)
    pair.client.send_data(sid, b"ping")
    pair.server.send_data(sid, b"pong")
    pair.client.send_fin(sid)
    pair.server.send_fin(sid)
    client_events, server_events = pair.exchange()
    assert server_events == [DataReceived(sid, b"ping"), StreamEnded(sid)]
    assert client_events == [DataReceived(sid, b"pong"), StreamEnded(sid)]
    for side in (pair.client, pair.server):
        side.acknowledge_received_data(sid, 4)
        assert side.open_stream_count == 0
        assert side.stream_state(sid) is StreamState.CLOSED


def test_connection_stream_ids_follow_side_parity() -> None:
    """The client opens odd ids, the server even ids, each increasing."""
    pair = TunnelPair()
    assert [pair.client.open_stream(b"a") for _ in range(3)] == [1, 3, 5]
    assert [pair.server.open_stream(b"b") for _ in range(3)] == [2, 4, 6]
    client_events, server_events = pair.exchange()
    assert [e.stream_id for e in server_events if isinstance(e, StreamOpened)] == [1, 3, 5]
    assert [e.stream_id for e in client_events if isinstance(e, StreamOpened)] == [2, 4, 6]


def test_connection_send_data_splits_into_max_send_payload_frames() -> None:
    """One send_data call becomes ceil(n / 16 KiB) DATA frames, bytes intact."""
    pair = TunnelPair()
    sid = _open(pair)
    payload = bytes(range(256)) * 200  # 51200 bytes
    pair.client.send_data(sid, memoryview(payload))
    frames = _frames(pair.client)
    assert [len(f.payload) for f in frames] == [MAX_SEND_PAYLOAD] * 3 + [51200 - 3 * 16384]
    assert b"".join(f.payload for f in frames) == payload
    assert {(f.type, f.stream_id) for f in frames} == {(FrameType.DATA, sid)}


def test_connection_send_window_is_min_of_stream_and_session() -> None:
    """send_window starts at the stream window and shrinks as bytes are sent."""
    pair = TunnelPair()
    sid = _open(pair)
    assert pair.client.send_window(sid) == INITIAL_STREAM_WINDOW
    pair.client.send_data(sid, bytes(1000))
    assert pair.client.send_window(sid) == INITIAL_STREAM_WINDOW - 1000
    assert pair.client.session_send_window == INITIAL_SESSION_WINDOW - 1000


def test_connection_send_data_beyond_window_raises_and_changes_nothing() -> None:
    """A caller sending more than its credit gets FLOW_CONTROL_ERROR, nothing queued."""
    pair = TunnelPair()
    sid = _open(pair)
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_data(sid, bytes(INITIAL_STREAM_WINDOW + 1))
    assert info.value.error_code is ErrorCode.FLOW_CONTROL_ERROR
    assert info.value.status_hint == 500
    assert pair.client.data_to_send() == []
    assert pair.client.send_window(sid) == INITIAL_STREAM_WINDOW


def test_connection_send_methods_refuse_wrong_states_without_harm() -> None:
    """DATA before OPEN_OK, after FIN, or on unknown ids raises; the stream survives."""
    pair = TunnelPair()
    sid = pair.client.open_stream(b"t")
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(sid, b"x")  # not accepted yet
    assert pair.client.send_window(sid) == 0
    with pytest.raises(LocalProtocolError):
        pair.client.accept_stream(sid)  # we opened it
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(99, b"x")
    pair.exchange()
    pair.server.accept_stream(sid)
    pair.exchange()
    pair.client.send_fin(sid)
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_data(sid, b"x")
    assert info.value.error_code is ErrorCode.STREAM_CLOSED
    assert pair.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    pair.server.send_data(sid, b"still flows")
    assert _data(pair.exchange()[0]) == b"still flows"


def test_connection_window_returned_in_batches_after_half_consumed() -> None:
    """No WINDOW until half the stream window is acknowledged; then one WINDOW."""
    pair = TunnelPair()
    sid = _open(pair)
    half = INITIAL_STREAM_WINDOW // 2
    pair.client.send_data(sid, bytes(half))
    pair.exchange()
    pair.server.acknowledge_received_data(sid, half - 1)
    assert pair.server.data_to_send() == []
    pair.server.acknowledge_received_data(sid, 1)
    assert _frames(pair.server) == [Frame.window(sid, half)]
    assert pair.server.unacknowledged(sid) == 0


def test_connection_unacknowledged_data_gets_no_credit() -> None:
    """A receiver that does not acknowledge stops its sender at the stream window."""
    pair = TunnelPair()
    sid = _open(pair)
    pair.client.send_data(sid, bytes(INITIAL_STREAM_WINDOW))
    pair.exchange()
    assert pair.client.send_window(sid) == 0
    assert pair.server.unacknowledged(sid) == INITIAL_STREAM_WINDOW
    other = _open(pair)
    assert pair.client.send_window(other) == INITIAL_STREAM_WINDOW  # others unaffected


def test_connection_stalled_streams_never_hold_session_credit() -> None:
    """More unread stream windows than the session window: session credit comes
    back on receipt, so every stream still gets its full window and one more
    stream still can send."""
    pair = TunnelPair()
    count = 2 * INITIAL_SESSION_WINDOW // INITIAL_STREAM_WINDOW
    sids = [_open(pair) for _ in range(count)]
    for sid in sids:
        assert pair.client.send_window(sid) == INITIAL_STREAM_WINDOW
        pair.client.send_data(sid, bytes(INITIAL_STREAM_WINDOW))
        pair.exchange()
    assert sum(pair.server.unacknowledged(sid) for sid in sids) == 2 * INITIAL_SESSION_WINDOW
    assert pair.server.buffered_bound >= 2 * INITIAL_SESSION_WINDOW
    other = _open(pair)
    assert pair.client.send_window(other) == INITIAL_STREAM_WINDOW
    assert pair.client.session_send_window > INITIAL_SESSION_WINDOW // 2


def test_connection_reset_is_idempotent_and_drops_late_data_silently() -> None:
    """Resetting twice is a no-op; DATA that crossed our RESET is credited, not answered."""
    pair = TunnelPair()
    sid = _open(pair)
    pair.client.send_data(sid, bytes(1000))
    pair.server.reset_stream(sid, ErrorCode.CANCEL)
    pair.server.reset_stream(sid, ErrorCode.CANCEL)
    pair.server.reset_stream(12345, ErrorCode.CANCEL)
    assert [f.type for f in _frames(pair.server)] == [FrameType.RESET]
    assert pair.deliver(pair.server) == []  # the 1000 bytes, dropped
    assert pair.server.session_credit_pending == 1000
    assert pair.server.data_to_send() == []  # no RESET STREAM_CLOSED storm


def test_connection_extra_session_window_is_granted_up_front() -> None:
    """A session window above the protocol's initial one is granted at start;
    stream windows start at the initial size whatever the limit."""
    limits = Limits(stream_window=4 * INITIAL_STREAM_WINDOW, session_window=2**30)
    pair = TunnelPair(server_limits=limits)
    assert _frames(pair.server) == [Frame.window(0, 2**30 - INITIAL_SESSION_WINDOW)]
    pair.client.receive(Frame.window(0, 2**30 - INITIAL_SESSION_WINDOW).serialize())
    sid = pair.client.open_stream(b"t")
    pair.deliver(pair.server)
    pair.server.accept_stream(sid)
    assert _frames(pair.server) == [Frame.open_ok(sid)]
    pair.client.receive(Frame.open_ok(sid).serialize())
    assert pair.client.send_window(sid) == INITIAL_STREAM_WINDOW


def _drain_window(pair: TunnelPair, sid: int) -> int:
    """Fill the stream's window, have the receiver consume it all; return the
    receive window the stream has afterwards."""
    pair.client.send_data(sid, bytes(pair.client.send_window(sid)))
    for event in pair.exchange()[1]:
        if isinstance(event, DataReceived):
            pair.server.acknowledge_received_data(sid, len(event.data))
    pair.exchange()
    return pair.server.stream_window(sid)


def test_connection_stream_window_grows_while_the_reader_keeps_up() -> None:
    """A window-limited sender whose reader consumes everything sees the window
    grow (at most doubling per credit return) up to ``Limits.stream_window``."""
    limits = Limits(stream_window=8 * INITIAL_STREAM_WINDOW)
    pair = TunnelPair(server_limits=limits)
    sid = _open(pair)
    windows = [INITIAL_STREAM_WINDOW] + [_drain_window(pair, sid) for _ in range(8)]
    assert windows[1] > INITIAL_STREAM_WINDOW
    assert all(b >= a for a, b in itertools.pairwise(windows))
    assert windows[-1] == 8 * INITIAL_STREAM_WINDOW
    assert pair.server.stream_window_growth == 7 * INITIAL_STREAM_WINDOW
    assert pair.client.send_window(sid) >= 4 * INITIAL_STREAM_WINDOW  # credit is batched


def test_connection_stream_window_growth_stops_at_the_session_budget() -> None:
    """Growth beyond ``stream_window_budget`` is not granted; a finished stream
    gives its growth back."""
    limits = Limits(stream_window=8 * INITIAL_STREAM_WINDOW,
                    stream_window_budget=3 * INITIAL_STREAM_WINDOW)
    pair = TunnelPair(server_limits=limits)
    first, second = _open(pair), _open(pair)
    for _ in range(6):
        _drain_window(pair, first)
    assert pair.server.stream_window(first) == 4 * INITIAL_STREAM_WINDOW  # 1 + budget 3
    for _ in range(4):
        assert _drain_window(pair, second) == INITIAL_STREAM_WINDOW  # budget spent
    assert pair.server.stream_window_growth == 3 * INITIAL_STREAM_WINDOW
    pair.server.reset_stream(first, ErrorCode.CANCEL)
    pair.exchange()
    assert pair.server.stream_window_growth == 0
    assert _drain_window(pair, second) > INITIAL_STREAM_WINDOW


def test_connection_stalled_reader_never_grows_its_window() -> None:
    """A reader that does not consume keeps the initial window: the receiver
    holds at most that much for it."""
    pair = TunnelPair(server_limits=Limits(stream_window=8 * INITIAL_STREAM_WINDOW))
    sid = _open(pair)
    pair.client.send_data(sid, bytes(INITIAL_STREAM_WINDOW))
    pair.exchange()
    assert pair.client.send_window(sid) == 0
    assert pair.server.stream_receive_window(sid) == 0
    assert pair.server.buffered_bound == INITIAL_STREAM_WINDOW
    assert pair.server.stream_window_growth == 0


def test_connection_clean_close_stops_counting_at_once() -> None:
    """After FIN both ways the stream is forgotten even with unread bytes: it no
    longer counts against the stream limit; acknowledging it is a no-op."""
    pair = TunnelPair(server_limits=Limits(max_concurrent_streams=1))
    sid = _open(pair)
    pair.client.send_data(sid, bytes(10))
    pair.client.send_fin(sid)
    pair.server.send_fin(sid)
    pair.exchange()
    assert pair.server.open_stream_count == 0
    assert pair.server.unacknowledged(sid) == 0
    assert pair.server.session_credit_pending == 10  # came back on receipt
    pair.server.acknowledge_received_data(sid, 10)  # forgotten stream: no-op
    _open(pair)  # the limit of 1 is free again


def test_connection_acknowledging_more_than_received_raises() -> None:
    """Acknowledging bytes that never arrived is a caller bug."""
    pair = TunnelPair()
    sid = _open(pair)
    with pytest.raises(LocalProtocolError):
        pair.server.acknowledge_received_data(sid, 1)
    with pytest.raises(LocalProtocolError):
        pair.server.acknowledge_received_data(sid, -1)


def test_connection_ping_is_answered_by_the_core() -> None:
    """A PING yields PingReceived on one side and PongReceived on the other."""
    pair = TunnelPair()
    pair.client.ping(b"12345678")
    client_events, server_events = pair.exchange()
    assert server_events == [PingReceived(b"12345678")]
    assert client_events == [PongReceived(b"12345678")]
    with pytest.raises(LocalProtocolError):
        pair.client.ping(b"short")


@pytest.mark.parametrize("message", [
    Frame.ping(b"12345678").serialize(),
    bytearray(Frame.ping(b"\x00" * 8).serialize()),
])
def test_connection_answers_a_ping_with_the_pong_frame_of_its_payload(message: bytes) -> None:
    """The PING fast path (no Frame parsed) answers exactly
    ``Frame.pong(payload).serialize()``, whatever buffer type the message is."""
    conn = Connection(is_client=False)
    payload = bytes(message[HEADER_SIZE:])
    assert conn.receive(message) == [PingReceived(payload)]
    assert conn.data_to_send() == [Frame.pong(payload).serialize()]


@pytest.mark.parametrize(("message", "code"), [
    (Frame.ping(b"12345678").serialize()[:-1], ErrorCode.FRAME_SIZE_ERROR),
    (Frame.ping(b"12345678").serialize() + b"9", ErrorCode.FRAME_SIZE_ERROR),
    (b"\x06\x00\x00\x00\x00\x01" + b"12345678", ErrorCode.PROTOCOL_ERROR),
])
def test_connection_refuses_a_malformed_ping(message: bytes, code: ErrorCode) -> None:
    """A PING of the wrong size or on a stream misses the fast path and fails
    the session with the code the checked parser gives (no PONG)."""
    conn = Connection(is_client=False)
    with pytest.raises(RemoteProtocolError) as err:
        conn.receive(message)
    assert err.value.error_code == code
    assert [Frame.parse(m).type for m in conn.data_to_send()] == [FrameType.GOAWAY]


def test_connection_goaway_refuses_streams_above_last_id_and_lets_others_finish() -> None:
    """GOAWAY reports the last processed stream; later ones are refused both ways."""
    pair = TunnelPair()
    sid = _open(pair)
    late = pair.client.open_stream(b"late")  # crosses the GOAWAY
    pair.server.goaway(ErrorCode.GOING_AWAY, "maintenance")
    client_events = pair.deliver(pair.client)
    assert client_events == [
        StreamResetEvent(late, ErrorCode.REFUSED_STREAM, "not processed before GOAWAY"),
        GoAwayReceived(sid, ErrorCode.GOING_AWAY, "maintenance"),
    ]
    assert pair.deliver(pair.server) == []  # the late OPEN: refused, no event
    assert Frame.reset(late, ErrorCode.REFUSED_STREAM, "going away") in _frames(pair.server)
    for side in (pair.client, pair.server):
        assert not side.accepting_streams
        with pytest.raises(LocalProtocolError) as info:
            side.open_stream(b"x")
        assert info.value.error_code is ErrorCode.REFUSED_STREAM
    pair.client.send_data(sid, b"finish")
    pair.client.send_fin(sid)
    pair.server.send_fin(sid)
    _, server_events = pair.exchange()
    assert _data(server_events) == b"finish"
    assert pair.client.open_stream_count == 0 and not pair.client.closed


def test_connection_error_goaway_closes_the_receiver() -> None:
    """A GOAWAY with an error code ends the session on the receiving side too."""
    pair = TunnelPair()
    _open(pair)
    pair.server.goaway(ErrorCode.PING_TIMEOUT)
    events = pair.deliver(pair.client)
    assert events == [GoAwayReceived(1, ErrorCode.PING_TIMEOUT, "")]
    assert pair.client.closed and pair.client.open_stream_count == 0
    assert pair.client.receive(Frame.ping(bytes(8)).serialize()) == []


def test_connection_text_message_is_a_protocol_error() -> None:
    """receive_text raises RemoteProtocolError after queueing GOAWAY PROTOCOL_ERROR."""
    conn = Connection(is_client=False)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_text()
    assert info.value.error_code is ErrorCode.PROTOCOL_ERROR
    assert info.value.status_hint == 502
    assert _frames(conn) == [Frame.goaway(0, ErrorCode.PROTOCOL_ERROR)]
    assert conn.closed
    conn.reset_stream(1, ErrorCode.CANCEL)  # no-ops after the session failed
    conn.goaway()
    assert conn.data_to_send() == []


def test_connection_protocol_error_is_abstract() -> None:
    """ProtocolError cannot be raised directly; subclasses carry code and status."""
    with pytest.raises(TypeError):
        ProtocolError("x")
    error = RemoteProtocolError("x", ErrorCode.FORBIDDEN)
    assert (error.error_code, error.status_hint) == (ErrorCode.FORBIDDEN, 403)
    assert LocalProtocolError("x").status_hint == 500


def test_connection_import_tunnel_does_not_import_asyncio() -> None:
    """The core stays sans-I/O: importing tunnel pulls in no asyncio/aiohttp/socket."""
    code = (
        "import sys, tunnel, tunnel.connection\n"
        "bad = [m for m in ('asyncio', 'aiohttp', 'websockets', 'socket') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert tunnel.SUBPROTOCOL == 'arc-tunnel.v1'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_connection_adapter_names_load_lazily_on_first_access() -> None:
    """tunnel.TunnelSession & co. import tunnel.aio only when first touched."""
    code = (
        "import sys, tunnel\n"
        "assert 'tunnel.aio' not in sys.modules\n"
        "session_class = tunnel.TunnelSession\n"
        "assert 'tunnel.aio' in sys.modules\n"
        "import tunnel.aio\n"
        "assert session_class is tunnel.aio.TunnelSession\n"
        "assert tunnel.StreamReset is tunnel.aio.StreamReset\n"
        "assert set(tunnel.__all__) <= set(dir(tunnel))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
