"""The sans-I/O tunnel v1 session: bytes in, events out, bytes to send queued.

Drive it like this::

    conn = Connection(is_client=True)
    for message in websocket:                 # each binary message
        for event in conn.receive(message):   # may raise RemoteProtocolError
            ...                               # dispatch to streams
        for out in conn.data_to_send():       # one binary message each
            websocket.send(out)

The connection never does I/O and has no clock. ``send_*``-style methods queue
frames and raise :class:`~tunnel.errors.LocalProtocolError` on a caller bug;
``receive`` raises :class:`~tunnel.errors.RemoteProtocolError` (GOAWAY already
queued) when the peer broke the protocol, or resets just the offending stream when
the violation is stream-level (the event list then carries a ``StreamReset``).
"""

from __future__ import annotations

from tunnel.errors import ErrorCode, LocalProtocolError
from tunnel.frames import Frame, data_header
from tunnel.limits import MAX_STREAM_ID, MAX_TARGET_LENGTH, PING_PAYLOAD_LENGTH, Limits
from tunnel.receive import FrameReceiver
from tunnel.session import StreamRecord
from tunnel.state import ConnectionInput, ConnectionState, StreamInput, StreamState

__all__ = ["Connection"]

_CLOSED = StreamState.CLOSED
_SEND_DATA = StreamInput.SEND_DATA
_PEER_MAY_SEND = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})


class Connection(FrameReceiver):
    """One side of a tunnel v1 session (one websocket).

    Args:
        is_client: True on the side that dialled the websocket; it opens odd stream
            ids, the other side even ones. Both sides may open streams.
        limits: Local limits; defaults from :mod:`tunnel.limits`.
    """

    def __init__(self, *, is_client: bool, limits: Limits | None = None) -> None:
        super().__init__(is_client=is_client, limits=limits)

    # --- commands --------------------------------------------------------------

    def open_stream(self, target: bytes) -> int:
        """Queue OPEN for a new stream; wait for ``StreamAccepted`` before sending DATA.

        Args:
            target: What the peer should connect the stream to (1..1024 bytes).

        Returns:
            The new stream id.

        Raises:
            LocalProtocolError: REFUSED_STREAM after a GOAWAY either way, after a
                fatal error, or when stream ids are exhausted; FRAME_SIZE_ERROR for
                a bad target length.
        """
        if not self._machine.allows(ConnectionInput.SEND_OPEN):
            raise LocalProtocolError("no new streams on this session", ErrorCode.REFUSED_STREAM)
        if not 1 <= len(target) <= MAX_TARGET_LENGTH:
            raise LocalProtocolError("target length out of range", ErrorCode.FRAME_SIZE_ERROR)
        stream_id = self._next_our_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted", ErrorCode.REFUSED_STREAM)
        self._next_our_id += 2
        self._machine.process(ConnectionInput.SEND_OPEN)
        stream = StreamRecord(stream_id, ours=True)
        stream.machine.process(StreamInput.SEND_OPEN)
        self._streams[stream_id] = stream
        self._out.append(Frame.open(stream_id, target).serialize())
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """Queue OPEN_OK for a stream from ``StreamOpened``; DATA may then flow.

        Raises:
            LocalProtocolError: the stream is not awaiting acceptance.
        """
        stream = self._require(stream_id, StreamInput.SEND_OPEN_OK)
        stream.machine.process(StreamInput.SEND_OPEN_OK)
        self._out.append(Frame.open_ok(stream_id).serialize())

    def send_window(self, stream_id: int) -> int:
        """Bytes that may be sent on the stream now: min(stream, session) credit.

        Returns 0 when the stream cannot send (unknown, not accepted yet, FIN sent,
        closed). Wait for ``WindowUpdated`` when it is 0.
        """
        stream = self._streams.get(stream_id)
        if stream is None or not stream.machine.allows(_SEND_DATA):
            return 0
        return min(stream.send_window, self._session_send_window)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue DATA frames carrying ``data`` (split into max-send-payload frames).

        Args:
            stream_id: An open stream that has not sent FIN.
            data: At most ``send_window(stream_id)`` bytes.

        Raises:
            LocalProtocolError: STREAM_CLOSED if the stream cannot send,
                FLOW_CONTROL_ERROR if ``data`` exceeds the send window.
        """
        stream = self._streams.get(stream_id)
        if stream is None or not stream.machine.allows(_SEND_DATA):
            raise LocalProtocolError("stream cannot send DATA", ErrorCode.STREAM_CLOSED)
        if isinstance(data, memoryview) and data.itemsize != 1:
            data = data.cast("B")
        size = len(data)
        if size > stream.send_window or size > self._session_send_window:
            raise LocalProtocolError("DATA beyond the send window", ErrorCode.FLOW_CONTROL_ERROR)
        if not size:
            return
        stream.send_window -= size
        self._session_send_window -= size
        header = data_header(stream_id)
        step = self._max_send_payload
        if size <= step:
            self._out.append(header + data)
            return
        view = memoryview(data)
        append = self._out.append
        for start in range(0, size, step):
            append(header + view[start : start + step])

    def send_fin(self, stream_id: int) -> None:
        """Queue FIN: we send no more DATA on the stream (we may still receive).

        Raises:
            LocalProtocolError: the stream is not open for sending.
        """
        stream = self._require(stream_id, StreamInput.SEND_FIN)
        stream.machine.process(StreamInput.SEND_FIN)
        self._out.append(Frame.fin(stream_id).serialize())
        if stream.machine.state is _CLOSED:
            self._finish(stream)

    def reset_stream(self, stream_id: int, code: ErrorCode, reason: str = "") -> None:
        """Abort a stream both ways with a RESET (also how an OPEN is refused).

        Drop whatever the app still buffers for it (its session credit was
        returned on receipt). On a stream that is unknown, already reset or
        already closed both ways it is a no-op (races with the peer are
        normal), as is any call after the session failed.

        Args:
            stream_id: The stream.
            code: Why, e.g. CANCEL, REFUSED_STREAM, CONNECT_FAILED.
            reason: Short text for the peer's logs (cut to 256 UTF-8 bytes).
        """
        if self._machine.state is ConnectionState.CLOSED:
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.machine.state is not _CLOSED:
            stream.machine.process(StreamInput.SEND_RESET)
            self._out.append(Frame.reset(stream_id, code, reason).serialize())
            self._remember_reset(stream_id)
        self._discard(stream)

    def acknowledge_received_data(self, stream_id: int, n: int) -> None:
        """Tell the core that the app consumed ``n`` bytes of ``DataReceived`` data.

        May queue a WINDOW frame returning the stream's credit, grown while the
        reader keeps up (auto-tuning, see ``tunnel/windows.py``). Session
        credit already went back on receipt. Acknowledging bytes of a stream that
        is reset or closed both ways is a no-op.

        Raises:
            LocalProtocolError: ``n`` is negative or more than was delivered.
        """
        if n <= 0:
            if n < 0:
                raise LocalProtocolError("negative acknowledgement", ErrorCode.INTERNAL_ERROR)
            return
        stream = self._streams.get(stream_id)
        if stream is None or self._machine.state is ConnectionState.CLOSED:
            return
        if n > stream.unacked:
            raise LocalProtocolError(
                "acknowledged more than was received", ErrorCode.INTERNAL_ERROR
            )
        stream.unacked -= n
        if stream.machine.state in _PEER_MAY_SEND:
            window = stream.recv_window
            before = window.max_window_size
            increment = window.process_bytes(
                n, self._growth_allowance(stream), drained=not stream.unacked
            )
            if increment:
                self._stream_growth += window.max_window_size - before
                stream.machine.process(StreamInput.SEND_WINDOW)
                self._out.append(Frame.window(stream_id, increment).serialize())

    def ping(self, payload: bytes) -> None:
        """Queue PING; expect ``PongReceived`` with the same 8 bytes.

        Raises:
            LocalProtocolError: payload is not 8 bytes, or the session failed.
        """
        if len(payload) != PING_PAYLOAD_LENGTH:
            raise LocalProtocolError("PING payload must be 8 bytes", ErrorCode.FRAME_SIZE_ERROR)
        if not self._machine.allows(ConnectionInput.SEND_PING):
            raise LocalProtocolError("session is closed", ErrorCode.PROTOCOL_ERROR)
        self._machine.process(ConnectionInput.SEND_PING)
        self._out.append(Frame.ping(payload).serialize())

    def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Queue GOAWAY: no new streams either way; existing ones may finish.

        Close the websocket once ``open_stream_count`` reaches 0 (or a deadline
        passes). A no-op after a fatal error (GOAWAY was already sent).
        """
        if self._machine.state is ConnectionState.CLOSED:
            return
        self._machine.process(ConnectionInput.SEND_GOAWAY)
        self._out.append(Frame.goaway(self._their_last_processed, code, reason).serialize())
