"""State machines of tunnel v1: one per stream, one per connection (session).

Theory of operation
-------------------

Rule 1: every transition is a row of a ``(state, input) -> new_state`` table in
this file, and nowhere else. An input is something that crosses the wire:
``SEND_*`` when we queue a frame, ``RECV_*`` when the peer's frame arrives.

Rule 2: a pair missing from its table is a protocol violation. The machine moves
to CLOSED and raises :class:`InvalidTransition` (a ``LocalProtocolError``). The
connection decides whose fault it was: from a ``send_*`` call the error reaches the
caller as is; from ``receive`` a stream-level violation becomes a RESET of that
stream and a session-level one becomes GOAWAY + ``RemoteProtocolError``.

Rule 3: ``send_*`` methods ask :meth:`allows` first and raise without touching
the state, so a caller bug never closes a healthy stream or session; rule 2 thus
only ever fires for frames received from the peer.

Rule 4: inputs that do not change the state (DATA, WINDOW while OPEN) still have
rows, so "is this frame allowed now?" is answered by the same lookup.

Stream lifecycle (HTTP/2 without PUSH, plus an explicit accept step)::

                      IDLE
          send OPEN /      \\ recv OPEN
              OPEN_SENT    OPEN_RECEIVED
        recv OPEN_OK \\      / send OPEN_OK
                       OPEN
          send FIN  /        \\ recv FIN
    HALF_CLOSED_LOCAL      HALF_CLOSED_REMOTE
          recv FIN  \\        / send FIN
                      CLOSED        (RESET either way: from any state to CLOSED)

Session lifecycle: OPEN until a GOAWAY is sent or received (no new streams from
then on, in either direction; existing streams finish), CLOSED after a fatal
error. The connection owns the side effects (refusing an OPEN that races our
GOAWAY, resetting streams above a received GOAWAY's last id).
"""

from __future__ import annotations

from enum import IntEnum

from tunnel.errors import ErrorCode, LocalProtocolError

__all__ = [
    "ConnectionInput",
    "ConnectionState",
    "ConnectionStateMachine",
    "InvalidTransition",
    "StreamInput",
    "StreamState",
    "StreamStateMachine",
]


class StreamState(IntEnum):
    """States of one stream (IntEnum: int hashing keeps table lookups cheap)."""

    IDLE = 0
    OPEN_SENT = 1
    OPEN_RECEIVED = 2
    OPEN = 3
    HALF_CLOSED_LOCAL = 4
    HALF_CLOSED_REMOTE = 5
    CLOSED = 6


class StreamInput(IntEnum):
    """Frames sent or received on one stream."""

    SEND_OPEN = 0
    RECV_OPEN = 1
    SEND_OPEN_OK = 2
    RECV_OPEN_OK = 3
    SEND_DATA = 4
    RECV_DATA = 5
    SEND_WINDOW = 6
    RECV_WINDOW = 7
    SEND_FIN = 8
    RECV_FIN = 9
    SEND_RESET = 10
    RECV_RESET = 11


class InvalidTransition(LocalProtocolError):
    """A ``(state, input)`` pair missing from its table.

    Attributes:
        state: The state before the input (the machine is CLOSED now).
        input: The rejected input.
    """

    def __init__(self, state: IntEnum, input_: IntEnum, error_code: ErrorCode) -> None:
        super().__init__(f"{input_.name} not allowed in state {state.name}", error_code)
        self.state = state
        self.input = input_


_S = StreamState
_I = StreamInput

# Table of every legal stream transition.
STREAM_TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (_S.IDLE, _I.SEND_OPEN): _S.OPEN_SENT,
    (_S.IDLE, _I.RECV_OPEN): _S.OPEN_RECEIVED,
    # Opener waits for OPEN_OK; it may already grant extra credit or give up.
    (_S.OPEN_SENT, _I.RECV_OPEN_OK): _S.OPEN,
    (_S.OPEN_SENT, _I.SEND_WINDOW): _S.OPEN_SENT,
    (_S.OPEN_SENT, _I.SEND_RESET): _S.CLOSED,
    (_S.OPEN_SENT, _I.RECV_RESET): _S.CLOSED,
    # Acceptor decides; the opener's early WINDOW may arrive meanwhile.
    (_S.OPEN_RECEIVED, _I.SEND_OPEN_OK): _S.OPEN,
    (_S.OPEN_RECEIVED, _I.RECV_WINDOW): _S.OPEN_RECEIVED,
    (_S.OPEN_RECEIVED, _I.SEND_RESET): _S.CLOSED,
    (_S.OPEN_RECEIVED, _I.RECV_RESET): _S.CLOSED,
    # Both directions flow.
    (_S.OPEN, _I.SEND_DATA): _S.OPEN,
    (_S.OPEN, _I.RECV_DATA): _S.OPEN,
    (_S.OPEN, _I.SEND_WINDOW): _S.OPEN,
    (_S.OPEN, _I.RECV_WINDOW): _S.OPEN,
    (_S.OPEN, _I.SEND_FIN): _S.HALF_CLOSED_LOCAL,
    (_S.OPEN, _I.RECV_FIN): _S.HALF_CLOSED_REMOTE,
    (_S.OPEN, _I.SEND_RESET): _S.CLOSED,
    (_S.OPEN, _I.RECV_RESET): _S.CLOSED,
    # We sent FIN: we only receive (and grant credit); WINDOW may still arrive.
    (_S.HALF_CLOSED_LOCAL, _I.RECV_DATA): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.SEND_WINDOW): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_WINDOW): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_FIN): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _I.SEND_RESET): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_RESET): _S.CLOSED,
    # Peer sent FIN: we only send; granting it credit would be pointless.
    (_S.HALF_CLOSED_REMOTE, _I.SEND_DATA): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_REMOTE, _I.RECV_WINDOW): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_FIN): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_RESET): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _I.RECV_RESET): _S.CLOSED,
}

# Frames the peer may send after it half-closed: a violation there is reported
# with STREAM_CLOSED (RFC 9113 section 5.1), any other with PROTOCOL_ERROR.
_AFTER_REMOTE_FIN = frozenset({_S.HALF_CLOSED_REMOTE, _S.CLOSED})


class StreamStateMachine:
    """The state of one stream, driven only through :data:`STREAM_TRANSITIONS`."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = StreamState.IDLE

    def allows(self, input_: StreamInput) -> bool:
        """Whether ``input_`` is legal now (checked before ``send_*`` so that a
        caller bug raises without touching the state)."""
        return (self.state, input_) in STREAM_TRANSITIONS

    def process(self, input_: StreamInput) -> StreamState:
        """Apply one input.

        Args:
            input_: The frame sent or received.

        Returns:
            The new state.

        Raises:
            InvalidTransition: the pair is not in the table; the state is now CLOSED.
                Its code is STREAM_CLOSED for a peer frame after the peer's FIN,
                else PROTOCOL_ERROR.
        """
        new_state = STREAM_TRANSITIONS.get((self.state, input_))
        if new_state is None:
            old = self.state
            self.state = StreamState.CLOSED
            code = (
                ErrorCode.STREAM_CLOSED
                if old in _AFTER_REMOTE_FIN and input_ & 1  # odd inputs are RECV_*
                else ErrorCode.PROTOCOL_ERROR
            )
            raise InvalidTransition(old, input_, code)
        self.state = new_state
        return new_state


class ConnectionState(IntEnum):
    """States of the session."""

    OPEN = 0
    GOAWAY_SENT = 1
    GOAWAY_RECEIVED = 2
    GOAWAY_BOTH = 3
    CLOSED = 4


class ConnectionInput(IntEnum):
    """Session-level events."""

    SEND_OPEN = 0
    RECV_OPEN = 1
    SEND_GOAWAY = 2
    RECV_GOAWAY = 3
    SEND_PING = 4
    RECV_PING = 5
    FAIL = 6


_C = ConnectionState
_CI = ConnectionInput

# Table of every legal session transition. SEND_OPEN is missing after any GOAWAY
# and RECV_OPEN after the peer's GOAWAY: no new streams either way.
CONNECTION_TRANSITIONS: dict[tuple[ConnectionState, ConnectionInput], ConnectionState] = {
    (_C.OPEN, _CI.SEND_OPEN): _C.OPEN,
    (_C.OPEN, _CI.RECV_OPEN): _C.OPEN,
    (_C.OPEN, _CI.SEND_GOAWAY): _C.GOAWAY_SENT,
    (_C.OPEN, _CI.RECV_GOAWAY): _C.GOAWAY_RECEIVED,
    (_C.OPEN, _CI.SEND_PING): _C.OPEN,
    (_C.OPEN, _CI.RECV_PING): _C.OPEN,
    # We said GOAWAY: we open nothing; a peer OPEN that crossed it is refused by
    # the connection (REFUSED_STREAM), which is why RECV_OPEN stays legal here.
    (_C.GOAWAY_SENT, _CI.RECV_OPEN): _C.GOAWAY_SENT,
    (_C.GOAWAY_SENT, _CI.SEND_GOAWAY): _C.GOAWAY_SENT,
    (_C.GOAWAY_SENT, _CI.RECV_GOAWAY): _C.GOAWAY_BOTH,
    (_C.GOAWAY_SENT, _CI.SEND_PING): _C.GOAWAY_SENT,
    (_C.GOAWAY_SENT, _CI.RECV_PING): _C.GOAWAY_SENT,
    # Peer said GOAWAY: neither side opens streams any more.
    (_C.GOAWAY_RECEIVED, _CI.SEND_GOAWAY): _C.GOAWAY_BOTH,
    (_C.GOAWAY_RECEIVED, _CI.RECV_GOAWAY): _C.GOAWAY_RECEIVED,
    (_C.GOAWAY_RECEIVED, _CI.SEND_PING): _C.GOAWAY_RECEIVED,
    (_C.GOAWAY_RECEIVED, _CI.RECV_PING): _C.GOAWAY_RECEIVED,
    (_C.GOAWAY_BOTH, _CI.RECV_OPEN): _C.GOAWAY_BOTH,
    (_C.GOAWAY_BOTH, _CI.SEND_GOAWAY): _C.GOAWAY_BOTH,
    (_C.GOAWAY_BOTH, _CI.RECV_GOAWAY): _C.GOAWAY_BOTH,
    (_C.GOAWAY_BOTH, _CI.SEND_PING): _C.GOAWAY_BOTH,
    (_C.GOAWAY_BOTH, _CI.RECV_PING): _C.GOAWAY_BOTH,
    # A fatal error (ours or the peer's) ends the session from any live state.
    (_C.OPEN, _CI.FAIL): _C.CLOSED,
    (_C.GOAWAY_SENT, _CI.FAIL): _C.CLOSED,
    (_C.GOAWAY_RECEIVED, _CI.FAIL): _C.CLOSED,
    (_C.GOAWAY_BOTH, _CI.FAIL): _C.CLOSED,
}


class ConnectionStateMachine:
    """The state of the session, driven only through :data:`CONNECTION_TRANSITIONS`."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = ConnectionState.OPEN

    def allows(self, input_: ConnectionInput) -> bool:
        """Whether ``input_`` is legal now (checked before ``send_*`` calls)."""
        return (self.state, input_) in CONNECTION_TRANSITIONS

    def process(self, input_: ConnectionInput) -> ConnectionState:
        """Apply one input.

        Returns:
            The new state.

        Raises:
            InvalidTransition: the pair is not in the table (PROTOCOL_ERROR);
                the state is now CLOSED.
        """
        new_state = CONNECTION_TRANSITIONS.get((self.state, input_))
        if new_state is None:
            old = self.state
            self.state = ConnectionState.CLOSED
            raise InvalidTransition(old, input_, ErrorCode.PROTOCOL_ERROR)
        self.state = new_state
        return new_state
