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
        # they hold stream credit only (session credit came back on receipt).
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
        # Sum over live streams of their receive window above the initial one
        # (what auto-tuning granted; capped by limits.stream_window_budget).
        self._stream_growth = 0
        self._out: list[bytes] = []
        # Control frames queued in answer to the peer since the last
        # data_to_send() (capped by limits.max_queued_replies).
        self._queued_replies = 0
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
        """Session bytes received whose credit is not returned yet (it goes back
        in batches of half the session window, on receipt, not on consumption).

        Invariant: session_receive_window + session_credit_pending == the
        session window we maintain.
        """
        return self._session_recv.pending

    @property
    def queued_replies(self) -> int:
        """Control replies to the peer (PONG, RESET answers) queued since the
        last ``data_to_send()``; the session fails above
        ``limits.max_queued_replies``."""
        return self._queued_replies

    @property
    def stream_window_growth(self) -> int:
        """Bytes of receive window our live streams hold above the initial one
        (never above ``limits.stream_window_budget``)."""
        return self._stream_growth

    @property
    def buffered_bound(self) -> int:
        """Most bytes the app can be holding unread right now: the sum of the
        receive windows granted to the live streams."""
        return sum(s.recv_window.max_window_size for s in self._streams.values())

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

    def stream_window(self, stream_id: int) -> int:
        """The receive window a stream has now (auto-tuned; 0 for unknown streams)."""
        stream = self._streams.get(stream_id)
        return stream.recv_window.max_window_size if stream is not None else 0

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
        self._queued_replies = 0
        return out

    # --- helpers shared by both halves -----------------------------------------

    def _is_idle(self, stream_id: int) -> bool:
        if stream_id & 1 == self._our_parity:
            return stream_id >= self._next_our_id
        return stream_id > self._their_last_id

    def _queue_reply(self, message: bytes) -> None:
        """Queue a control frame that answers a peer's frame, within the cap.

        Raises:
            LocalProtocolError: ENHANCE_YOUR_CALM when the peer keeps earning
                replies without reading them (see MAX_QUEUED_REPLIES).
        """
        self._queued_replies += 1
        if self._queued_replies > self._limits.max_queued_replies:
            raise LocalProtocolError(
                "peer does not read the replies it causes", ErrorCode.ENHANCE_YOUR_CALM
            )
        self._out.append(message)

    def _refuse(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        self._queue_reply(Frame.reset(stream_id, code, reason).serialize())
        self._remember_reset(stream_id)

    def _remember_reset(self, stream_id: int) -> None:
        memory = self._reset_by_us
        memory[stream_id] = None
        if len(memory) > CLOSED_STREAM_MEMORY:
            del memory[next(iter(memory))]

    def _growth_allowance(self, stream: StreamRecord) -> int:
        """How much ``stream``'s receive window may grow now (auto-tuning)."""
        return min(
            self._limits.stream_window - stream.recv_window.max_window_size,
            self._limits.stream_window_budget - self._stream_growth,
        )

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
        """Clean close (FIN both ways): forget it now. Its session credit came
        back on receipt and no more stream credit is due, so a finished stream
        stops counting against the stream limit even if the app has not read
        its last bytes yet."""
        self._forget(stream)

    def _discard(self, stream: StreamRecord) -> None:
        """Reset or refused: forget it (its session credit came back on receipt)."""
        self._forget(stream)

    def _forget(self, stream: StreamRecord) -> None:
        if self._streams.pop(stream.id, None) is not None:
            self._stream_growth -= stream.recv_window.max_window_size - INITIAL_STREAM_WINDOW
            if not stream.ours:
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
        self._stream_growth = 0
