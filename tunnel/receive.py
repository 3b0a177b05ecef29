"""The peer's half of a tunnel connection: one websocket message in, events out.

Session-level violations raise ``LocalProtocolError`` inside the handlers; the
receive boundary (:meth:`FrameReceiver.receive`) fails the session (GOAWAY with
the code) and re-raises them as ``RemoteProtocolError``. Stream-level violations
reset only the stream and come back as a ``StreamReset`` event.
"""

from __future__ import annotations

from collections.abc import Callable

from tunnel.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PingReceived,
    PongReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from tunnel.frames import HEADER, HEADER_SIZE, Frame, FrameType
from tunnel.limits import MAX_STREAM_ID, MAX_WINDOW_SIZE, PING_PAYLOAD_LENGTH, Limits
from tunnel.session import SessionCore, StreamRecord
from tunnel.state import (
    ConnectionInput,
    ConnectionState,
    InvalidTransition,
    StreamInput,
    StreamState,
)

__all__ = ["FrameReceiver"]

_CLOSED = StreamState.CLOSED
_RECV_DATA = StreamInput.RECV_DATA
_DATA = FrameType.DATA
_PING = FrameType.PING
_unpack_header = HEADER.unpack_from
# A well-formed PING, the only frame an idle session receives: its whole size,
# and the header of the PONG that answers it.
_PING_SIZE = HEADER_SIZE + PING_PAYLOAD_LENGTH
_PONG_HEADER = HEADER.pack(FrameType.PONG, 0, 0)
# GOAWAY codes that drain the session; any other code ends it at once.
_GRACEFUL = frozenset({ErrorCode.NO_ERROR, ErrorCode.GOING_AWAY})


class FrameReceiver(SessionCore):
    """Adds :meth:`receive` and :meth:`receive_text` to :class:`SessionCore`."""

    def __init__(self, *, is_client: bool, limits: Limits | None = None) -> None:
        super().__init__(is_client=is_client, limits=limits)
        self._handlers: dict[int, Callable[[Frame], list[Event]]] = {
            FrameType.OPEN: self._receive_open,
            FrameType.OPEN_OK: self._receive_open_ok,
            FrameType.WINDOW: self._receive_window,
            FrameType.FIN: self._receive_fin,
            FrameType.RESET: self._receive_reset,
            FrameType.PING: self._receive_ping,
            FrameType.PONG: self._receive_pong,
            FrameType.GOAWAY: self._receive_goaway,
        }

    # --- input ---------------------------------------------------------------

    def receive(self, message: bytes) -> list[Event]:
        """Process one binary websocket message from the peer.

        Args:
            message: The whole message (exactly one frame).

        Returns:
            The events it caused, in order (often one; may be empty). After a fatal
            error further messages are ignored and return ``[]``.

        Raises:
            RemoteProtocolError: the peer broke a session-level rule. A GOAWAY with
                the error code is queued and the connection is closed: flush
                ``data_to_send()``, then close the websocket.
        """
        if self._machine.state is ConnectionState.CLOSED:
            return []
        try:
            if len(message) >= HEADER_SIZE:
                frame_type, _flags, stream_id = _unpack_header(message)
                if frame_type == _DATA:
                    return self._receive_data(stream_id, message)
                if frame_type == _PING and stream_id == 0 and len(message) == _PING_SIZE:
                    # Every idle agent's keepalive: no Frame parsed or built.
                    # A malformed PING takes the checked path below.
                    return self._receive_ping_message(bytes(message[HEADER_SIZE:]))
            frame = Frame.parse(message, self._max_receive_payload)
            return self._handlers[frame.type](frame)
        except LocalProtocolError as exc:
            self._fail(exc.error_code)
            exc._reraise_as_remote_protocol_error()
        except Exception:
            # A bug of ours, not the peer's: tell the peer without details.
            self._fail(ErrorCode.INTERNAL_ERROR)
            raise

    def receive_text(self) -> None:
        """Report that a text websocket message arrived (tunnel v1 only uses binary).

        Raises:
            RemoteProtocolError: always (PROTOCOL_ERROR); GOAWAY is queued.
        """
        if self._machine.state is ConnectionState.CLOSED:
            return
        self._fail(ErrorCode.PROTOCOL_ERROR)
        raise RemoteProtocolError("text message on a tunnel websocket", ErrorCode.PROTOCOL_ERROR)

    # --- receive handlers --------------------------------------------------------

    def _receive_data(self, stream_id: int, message: bytes) -> list[Event]:
        # Hot path: no Frame object, one dict lookup per table.
        size = len(message) - HEADER_SIZE
        if size > self._max_receive_payload:
            raise LocalProtocolError("frame payload too large", ErrorCode.FRAME_SIZE_ERROR)
        if not 0 < stream_id <= MAX_STREAM_ID:
            raise LocalProtocolError("DATA on stream 0 or reserved bit", ErrorCode.PROTOCOL_ERROR)
        # Session credit is spent even for streams that are gone (RFC 9113 6.9),
        # and returned at once: the stream window bounds what waits for a
        # reader, the session window only what is in flight. So a stalled
        # reader never holds session credit that other streams need.
        session = self._session_recv
        session.window_consumed(size)
        if size:
            increment = session.process_bytes(size)
            if increment:
                self._out.append(Frame.window(0, increment).serialize())
        stream = self._streams.get(stream_id)
        if stream is None or stream.machine.state is _CLOSED:
            return self._receive_on_inactive(stream_id, _DATA)
        try:
            stream.machine.process(_RECV_DATA)
        except InvalidTransition as exc:
            return self._stream_error(stream, exc.error_code)
        stream.recv_window.window_consumed(size)
        stream.unacked += size
        return [DataReceived(stream_id, message[HEADER_SIZE:])]

    def _receive_open(self, frame: Frame) -> list[Event]:
        stream_id = frame.stream_id
        if stream_id & 1 == self._our_parity:
            raise LocalProtocolError("OPEN with our stream id parity", ErrorCode.PROTOCOL_ERROR)
        if stream_id <= self._their_last_id:
            raise LocalProtocolError("stream id reused", ErrorCode.PROTOCOL_ERROR)
        self._machine.process(ConnectionInput.RECV_OPEN)
        self._their_last_id = stream_id
        if not self._machine.allows(ConnectionInput.SEND_OPEN):
            # Crossed our GOAWAY: not processed, the peer may retry elsewhere.
            self._refuse(stream_id, ErrorCode.REFUSED_STREAM, "going away")
            return []
        if self._their_stream_count >= self._limits.max_concurrent_streams:
            self._refuse(stream_id, ErrorCode.TOO_MANY_STREAMS, "too many streams")
            return []
        stream = StreamRecord(stream_id, ours=False)
        stream.machine.process(StreamInput.RECV_OPEN)
        self._streams[stream_id] = stream
        self._their_stream_count += 1
        self._their_last_processed = stream_id
        return [StreamOpened(stream_id, frame.target)]

    def _advance(self, stream_id: int, frame_type: int, stream_input: StreamInput) -> StreamRecord | list[Event]:
        """The live stream ``stream_id`` after ``stream_input``; or, when it is
        gone or the input is not allowed in its state, the events of that."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.machine.state is _CLOSED:
            return self._receive_on_inactive(stream_id, frame_type)
        try:
            stream.machine.process(stream_input)
        except InvalidTransition as exc:
            return self._stream_error(stream, exc.error_code)
        return stream

    def _receive_open_ok(self, frame: Frame) -> list[Event]:
        stream = self._advance(frame.stream_id, frame.type, StreamInput.RECV_OPEN_OK)
        if isinstance(stream, list):
            return stream
        return [StreamAccepted(frame.stream_id)]

    def _receive_window(self, frame: Frame) -> list[Event]:
        stream_id, increment = frame.stream_id, frame.increment
        if stream_id == 0:
            if self._session_send_window + increment > MAX_WINDOW_SIZE:
                raise LocalProtocolError(
                    "session window above 2**31-1", ErrorCode.FLOW_CONTROL_ERROR
                )
            self._session_send_window += increment
            return [WindowUpdated(0, increment)]
        stream = self._advance(stream_id, frame.type, StreamInput.RECV_WINDOW)
        if isinstance(stream, list):
            return stream
        if stream.send_window + increment > MAX_WINDOW_SIZE:
            # A stream-level flow-control error, as in RFC 9113 6.9.1.
            return self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR)
        stream.send_window += increment
        return [WindowUpdated(stream_id, increment)]

    def _receive_fin(self, frame: Frame) -> list[Event]:
        stream = self._advance(frame.stream_id, frame.type, StreamInput.RECV_FIN)
        if isinstance(stream, list):
            return stream
        if stream.machine.state is _CLOSED:
            self._finish(stream)
        return [StreamEnded(frame.stream_id)]

    def _receive_reset(self, frame: Frame) -> list[Event]:
        stream = self._streams.get(frame.stream_id)
        if stream is None or stream.machine.state is _CLOSED:
            return self._receive_on_inactive(frame.stream_id, frame.type)
        stream.machine.process(StreamInput.RECV_RESET)  # legal in every live state
        self._discard(stream)
        return [StreamReset(frame.stream_id, frame.error_code, frame.reason)]

    def _receive_ping(self, frame: Frame) -> list[Event]:
        return self._receive_ping_message(frame.payload)

    def _receive_ping_message(self, payload: bytes) -> list[Event]:
        self._machine.process(ConnectionInput.RECV_PING)
        self._queue_reply(_PONG_HEADER + payload)  # what Frame.pong(payload).serialize() gives
        return [PingReceived(payload)]

    def _receive_pong(self, frame: Frame) -> list[Event]:
        return [PongReceived(frame.payload)]

    def _receive_goaway(self, frame: Frame) -> list[Event]:
        self._machine.process(ConnectionInput.RECV_GOAWAY)
        last = frame.last_stream_id
        events: list[Event] = []
        for stream in list(self._streams.values()):
            if stream.ours and stream.id > last and stream.machine.state is not _CLOSED:
                # The peer never processed this OPEN: it is gone without a RESET
                # and may be retried on another session.
                stream.machine.process(StreamInput.RECV_RESET)
                self._discard(stream)
                events.append(
                    StreamReset(stream.id, ErrorCode.REFUSED_STREAM, "not processed before GOAWAY")
                )
        code = frame.error_code
        events.append(GoAwayReceived(last, code, frame.reason))
        if code not in _GRACEFUL:
            # The peer is failing the session and will close the websocket: no
            # GOAWAY back (it already has one), nothing more to process.
            self._machine.process(ConnectionInput.FAIL)
            self._streams.clear()
            self._their_stream_count = 0
            self._stream_growth = 0
        return events

    # --- stream-level outcomes -------------------------------------------------

    def _receive_on_inactive(self, stream_id: int, frame_type: int) -> list[Event]:
        """A frame for a stream that is closed (or never existed)."""
        if self._is_idle(stream_id):
            raise LocalProtocolError("frame on an idle stream", ErrorCode.PROTOCOL_ERROR)
        if (frame_type == _DATA or frame_type == FrameType.FIN) and (
            stream_id not in self._reset_by_us
        ):
            # DATA/FIN after the peer's own FIN or after our RESET was forgotten:
            # tell the peer (RFC 9113 5.1 STREAM_CLOSED). WINDOW, RESET and OPEN_OK
            # for a closed stream are normal races and are ignored.
            self._queue_reply(Frame.reset(stream_id, ErrorCode.STREAM_CLOSED).serialize())
        return []

    def _stream_error(self, stream: StreamRecord, code: ErrorCode) -> list[Event]:
        """The peer broke a stream-level rule: RESET just that stream."""
        if stream.machine.state is not _CLOSED:
            stream.machine.process(StreamInput.SEND_RESET)
        self._queue_reply(Frame.reset(stream.id, code).serialize())
        self._remember_reset(stream.id)
        self._discard(stream)
        return [StreamReset(stream.id, code, "")]
