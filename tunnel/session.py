"""Book-keeping shared by the receive and send halves of a tunnel connection.

:class:`SessionCore` owns the stream table, stream id allocation, the session
windows, the outbound queue and the helpers that keep credit accounting exact
when streams end. :class:`tunnel.receive.FrameReceiver` adds the peer's side and
:class:`tunnel.connection.Connection` the caller's side; applications only use
``Connection``.
"""

from __future__ import annotations

from tunnel.errors import ErrorCode, LocalProtocolError
from tunnel.frames import Frame
from tunnel.limits import (
    CLOSED_STREAM_MEMORY,
    INITIAL_SESSION_WINDOW,
    INITIAL_STREAM_WINDOW,
    Limits,
)
from tunnel.state import (
    ConnectionInput,
    ConnectionState,
    ConnectionStateMachine,
    StreamInput,
    StreamState,
    StreamStateMachine,
)
from tunnel.windows import WindowManager

__all__ = ["SessionCore", "StreamRecord"]

_CLOSED = StreamState.CLOSED


class StreamRecord:
    """Book-keeping of one stream (internal; the public face is the stream id)."""

    __slots__ = ("id", "machine", "ours", "recv_window", "send_window", "unacked")

    def __init__(self, stream_id: int, *, ours: bool) -> None:
        self.id = stream_id
        self.ours = ours
        self.machine = StreamStateMachine()
        # Credit the peer granted us (bytes we may still send).
        self.send_window = INITIAL_STREAM_WINDOW
        # Credit we granted the peer, and when to grant more.
        self.recv_window = WindowManager(INITIAL_STREAM_WINDOW)
        # Bytes delivered in DataReceived but not yet acknowledged by the app:
        # they hold session credit, given back on ack or when the stream is reset.
        self.unacked = 0


class SessionCore:
    """State of one session and the helpers both halves share.

    Args:
        is_client: True on the side that dialled the websocket (odd stream ids).
        limits: Local limits; defaults from :mod:`tunnel.limits`.
    """

    def __init__(self, *, is_client: bool, limits: Limits | None = None) -> None:
        self._is_client = is_client
        self._limits = limits if limits is not None else Limits()
        self._max_send_payload = self._limits.max_send_payload
        self._max_receive_payload = self._limits.max_receive_payload
        self._machine = ConnectionStateMachine()
        self._streams: dict[int, StreamRecord] = {}
        self._our_parity = 1 if is_client else 0
        self._next_our_id = 1 if is_client else 2
        # Highest peer id seen in an OPEN (ids must grow) and highest one we
        # actually processed (what GOAWAY reports).
        self._their_last_id = 0
        self._their_last_processed = 0
        self._their_stream_count = 0
        # Streams we reset whose in-flight DATA is dropped silently (ordered, capped).
        self._reset_by_us: dict[int, None] = {}
        self._session_send_window = INITIAL_SESSION_WINDOW
        self._session_recv = WindowManager(INITIAL_SESSION_WINDOW)
        self._out: list[bytes] = []
        # Set once a fatal error queued its GOAWAY (it is sent only once).
        self._failed = False
        extra = self._limits.session_window - INITIAL_SESSION_WINDOW
        if extra > 0:
            self._session_recv.window_opened(extra)
            self._out.append(Frame.window(0, extra).serialize())

    # --- properties ----------------------------------------------------------

    @property
    def is_client(self) -> bool:
        """True on the side that opens odd stream ids."""
        return self._is_client

    @property
    def limits(self) -> Limits:
        """The local limits in force."""
        return self._limits

    @property
    def state(self) -> ConnectionState:
        """The session state."""
        return self._machine.state

    @property
    def closed(self) -> bool:
        """True after a fatal error: flush ``data_to_send()`` and close the websocket."""
        return self._machine.state is ConnectionState.CLOSED

    @property
    def accepting_streams(self) -> bool:
        """False once a GOAWAY was sent or received (or the session failed)."""
        return self._machine.allows(ConnectionInput.SEND_OPEN)

    @property
    def open_stream_count(self) -> int:
        """Streams not yet closed both ways (either side's)."""
        return sum(1 for s in self._streams.values() if s.machine.state is not _CLOSED)

    @property
    def session_send_window(self) -> int:
        """Session credit the peer granted us (bytes we may still send in total)."""
        return self._session_send_window

    @property
    def session_receive_window(self) -> int:
        """Session credit we granted the peer that it has not used yet."""
        return self._session_recv.current_window_size

    @property
    def session_credit_pending(self) -> int:
        """Session bytes consumed (or freed by resets) whose credit is not returned yet.

        Invariant: session_receive_window + session_credit_pending + the
        unacknowledged bytes of all streams == the session window we maintain.
        """
        return self._session_recv.pending

    def stream_state(self, stream_id: int) -> StreamState:
        """Return a stream's state: IDLE if never used, CLOSED once forgotten."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream.machine.state
        return StreamState.IDLE if self._is_idle(stream_id) else StreamState.CLOSED

    def stream_receive_window(self, stream_id: int) -> int:
        """Credit the peer has left on a stream (0 for unknown streams)."""
        stream = self._streams.get(stream_id)
        return stream.recv_window.current_window_size if stream is not None else 0

    def unacknowledged(self, stream_id: int) -> int:
        """Bytes delivered on a stream that the app has not acknowledged yet."""
        stream = self._streams.get(stream_id)
        return stream.unacked if stream is not None else 0

    # --- output --------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Return (and forget) the queued websocket binary messages, oldest first.

        Call it after every ``receive`` and every ``send_*``-style call; send each
        item as one binary websocket message, in order.
        """
        out = self._out
        self._out = []
        return out

    # --- helpers shared by both halves -----------------------------------------

    def _is_idle(self, stream_id: int) -> bool:
        if stream_id & 1 == self._our_parity:
            return stream_id >= self._next_our_id
        return stream_id > self._their_last_id

    def _refuse(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        self._out.append(Frame.reset(stream_id, code, reason).serialize())
        self._remember_reset(stream_id)

    def _remember_reset(self, stream_id: int) -> None:
        memory = self._reset_by_us
        memory[stream_id] = None
        if len(memory) > CLOSED_STREAM_MEMORY:
            del memory[next(iter(memory))]

    def _grant_extra_stream_window(self, stream: StreamRecord) -> None:
        extra = self._limits.stream_window - INITIAL_STREAM_WINDOW
        if extra > 0:
            stream.recv_window.window_opened(extra)
            stream.machine.process(StreamInput.SEND_WINDOW)
            self._out.append(Frame.window(stream.id, extra).serialize())

    def _require(self, stream_id: int, input_: StreamInput) -> StreamRecord:
        stream = self._streams.get(stream_id)
        if stream is None or not stream.machine.allows(input_):
            state = stream.machine.state.name if stream is not None else "unknown"
            raise LocalProtocolError(
                f"{input_.name} not allowed on stream {stream_id} ({state})",
                ErrorCode.STREAM_CLOSED,
            )
        return stream

    def _finish(self, stream: StreamRecord) -> None:
        """Clean close (FIN both ways): keep the record until the app acked it all."""
        if not stream.unacked:
            self._forget(stream)

    def _discard(self, stream: StreamRecord) -> None:
        """Reset or refused: return the stream's unacknowledged credit and forget it."""
        if stream.unacked:
            increment = self._session_recv.process_bytes(stream.unacked)
            stream.unacked = 0
            if increment:
                self._out.append(Frame.window(0, increment).serialize())
        self._forget(stream)

    def _forget(self, stream: StreamRecord) -> None:
        if self._streams.pop(stream.id, None) is not None and not stream.ours:
            self._their_stream_count -= 1

    def _fail(self, code: ErrorCode) -> None:
        """Fatal error: queue GOAWAY with the code only, close, drop every stream."""
        if self._failed:
            return
        self._failed = True
        if self._machine.state is not ConnectionState.CLOSED:
            # Not closed yet by an invalid session transition (rule 2 of state.py).
            self._machine.process(ConnectionInput.FAIL)
        self._out.append(Frame.goaway(self._their_last_processed, code).serialize())
        self._streams.clear()
        self._their_stream_count = 0
