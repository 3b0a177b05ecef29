"""State machines: every (state, input) pair, and structural properties of the tables."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.errors import ErrorCode, LocalProtocolError
from tunnel.state import (
    CONNECTION_TRANSITIONS,
    STREAM_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    ConnectionStateMachine,
    InvalidTransition,
    StreamInput,
    StreamState,
    StreamStateMachine,
)

LIVE_STREAM_STATES = [s for s in StreamState if s not in (StreamState.IDLE, StreamState.CLOSED)]


def _check_stream_pair(state: StreamState, input_: StreamInput) -> None:
    machine = StreamStateMachine()
    machine.state = state
    expected = STREAM_TRANSITIONS.get((state, input_))
    assert machine.allows(input_) is (expected is not None)
    assert machine.state is state  # allows() never changes the state
    if expected is not None:
        assert machine.process(input_) is expected
        assert machine.state is expected
        return
    with pytest.raises(InvalidTransition) as info:
        machine.process(input_)
    assert isinstance(info.value, LocalProtocolError)
    assert machine.state is StreamState.CLOSED
    assert (info.value.state, info.value.input) == (state, input_)
    assert info.value.error_code in (ErrorCode.STREAM_CLOSED, ErrorCode.PROTOCOL_ERROR)


@given(st.sampled_from(list(StreamState)), st.sampled_from(list(StreamInput)))
def test_stream_machine_follows_table_or_closes_with_error(
    state: StreamState, input_: StreamInput
) -> None:
    """A pair in the table moves to its row's state; any other pair moves to CLOSED
    and raises InvalidTransition (a LocalProtocolError) naming the old state."""
    _check_stream_pair(state, input_)


def test_stream_machine_every_pair_is_exercised() -> None:
    """The exhaustive version of the property above, without sampling."""
    for state, input_ in itertools.product(StreamState, StreamInput):
        _check_stream_pair(state, input_)


def test_stream_machine_peer_frames_after_peer_fin_say_stream_closed() -> None:
    """DATA/FIN received after the peer's FIN is STREAM_CLOSED (RFC 9113 5.1)."""
    for input_ in (StreamInput.RECV_DATA, StreamInput.RECV_FIN):
        machine = StreamStateMachine()
        machine.state = StreamState.HALF_CLOSED_REMOTE
        with pytest.raises(InvalidTransition) as info:
            machine.process(input_)
        assert info.value.error_code is ErrorCode.STREAM_CLOSED


def test_stream_machine_closed_is_terminal() -> None:
    """No row leaves CLOSED."""
    assert not [pair for pair in STREAM_TRANSITIONS if pair[0] is StreamState.CLOSED]


def test_stream_machine_reset_closes_every_live_state() -> None:
    """RESET either way is legal in every state but IDLE and CLOSED and closes."""
    for state in LIVE_STREAM_STATES:
        for input_ in (StreamInput.SEND_RESET, StreamInput.RECV_RESET):
            assert STREAM_TRANSITIONS[(state, input_)] is StreamState.CLOSED


def test_stream_machine_every_state_is_reachable_from_idle() -> None:
    """Walking the table from IDLE reaches every state (no dead rows)."""
    seen = {StreamState.IDLE}
    frontier = [StreamState.IDLE]
    while frontier:
        state = frontier.pop()
        for (src, _), dst in STREAM_TRANSITIONS.items():
            if src is state and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen == set(StreamState)


def test_stream_machine_data_only_flows_after_accept() -> None:
    """No DATA either way before OPEN_OK, or after that direction's FIN."""
    send_ok = {s for (s, i) in STREAM_TRANSITIONS if i is StreamInput.SEND_DATA}
    recv_ok = {s for (s, i) in STREAM_TRANSITIONS if i is StreamInput.RECV_DATA}
    assert send_ok == {StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE}
    assert recv_ok == {StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL}


def _check_connection_pair(state: ConnectionState, input_: ConnectionInput) -> None:
    machine = ConnectionStateMachine()
    machine.state = state
    expected = CONNECTION_TRANSITIONS.get((state, input_))
    assert machine.allows(input_) is (expected is not None)
    if expected is not None:
        assert machine.process(input_) is expected
        return
    with pytest.raises(InvalidTransition) as info:
        machine.process(input_)
    assert machine.state is ConnectionState.CLOSED
    assert info.value.error_code is ErrorCode.PROTOCOL_ERROR


@given(st.sampled_from(list(ConnectionState)), st.sampled_from(list(ConnectionInput)))
def test_connection_machine_follows_table_or_closes_with_error(
    state: ConnectionState, input_: ConnectionInput
) -> None:
    """Session machine: table rows apply; anything else closes with PROTOCOL_ERROR."""
    _check_connection_pair(state, input_)


def test_connection_machine_every_pair_is_exercised() -> None:
    """The exhaustive version of the session property, without sampling."""
    for state, input_ in itertools.product(ConnectionState, ConnectionInput):
        _check_connection_pair(state, input_)


def test_connection_machine_no_new_streams_after_any_goaway() -> None:
    """SEND_OPEN is legal only before any GOAWAY; RECV_OPEN never after the peer's."""
    assert {s for (s, i) in CONNECTION_TRANSITIONS if i is ConnectionInput.SEND_OPEN} == {
        ConnectionState.OPEN
    }
    recv_open = {s for (s, i) in CONNECTION_TRANSITIONS if i is ConnectionInput.RECV_OPEN}
    assert ConnectionState.GOAWAY_RECEIVED not in recv_open


def test_connection_machine_fail_closes_every_live_state() -> None:
    """FAIL ends the session from any state but CLOSED, which is terminal."""
    for state in ConnectionState:
        if state is ConnectionState.CLOSED:
            assert not [p for p in CONNECTION_TRANSITIONS if p[0] is state]
        else:
            assert CONNECTION_TRANSITIONS[(state, ConnectionInput.FAIL)] is ConnectionState.CLOSED
