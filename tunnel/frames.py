"""Frame codec of tunnel v1: one websocket binary message is exactly one frame.

Layout (big endian, see PROTOCOL.md)::

    +--------+--------+--------------------------------+----------------
    | type 8 | flags 8| R | stream id 31               | payload ...
    +--------+--------+--------------------------------+----------------

The websocket message length delimits the payload. :class:`Frame` owns parsing,
serialising and checking; the DATA send path builds wire bytes directly with
:func:`data_header` to stay cheap (see ``Connection.send_data``).

Parsing raises :class:`~tunnel.errors.LocalProtocolError` carrying the wire error
code; ``Connection.receive`` converts it into a ``RemoteProtocolError`` because
there the bytes came from the peer (h11's pattern).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from tunnel.errors import ErrorCode, LocalProtocolError
from tunnel.limits import (
    MAX_REASON_LENGTH,
    MAX_RECEIVE_PAYLOAD,
    MAX_STREAM_ID,
    MAX_TARGET_LENGTH,
    MAX_WINDOW_SIZE,
    PING_PAYLOAD_LENGTH,
)

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "Frame",
    "FrameType",
    "data_header",
    "decode_error_code",
    "encode_reason",
]

# type u8, flags u8, stream id u32 (top bit reserved).
HEADER = struct.Struct("!BBI")
HEADER_SIZE = HEADER.size
_U32 = struct.Struct("!I")
_U32_PAIR = struct.Struct("!II")
_RESERVED_BIT = 0x8000_0000
_pack_header = HEADER.pack


class FrameType(IntEnum):
    """Frame types (u8 on the wire); any other value is PROTOCOL_ERROR."""

    DATA = 0x0
    OPEN = 0x1
    OPEN_OK = 0x2
    WINDOW = 0x3
    FIN = 0x4
    RESET = 0x5
    PING = 0x6
    PONG = 0x7
    GOAWAY = 0x8


# Frame types that address one stream (stream id != 0) vs the session (id == 0).
# WINDOW is the only type valid on both.
_STREAM_TYPES = frozenset(
    {FrameType.DATA, FrameType.OPEN, FrameType.OPEN_OK, FrameType.FIN, FrameType.RESET}
)
_SESSION_TYPES = frozenset({FrameType.PING, FrameType.PONG, FrameType.GOAWAY})
_ERROR_CODES = {int(code): code for code in ErrorCode}


def data_header(stream_id: int) -> bytes:
    """Return the 6 header bytes of a DATA frame on ``stream_id`` (hot path helper)."""
    return _pack_header(FrameType.DATA, 0, stream_id)


def decode_error_code(value: int) -> ErrorCode:
    """Map a wire error code to :class:`ErrorCode`; unknown codes become INTERNAL_ERROR.

    Unknown codes come from newer peers and must not trigger special behaviour
    (RFC 9113 section 7 has the same rule).
    """
    return _ERROR_CODES.get(value, ErrorCode.INTERNAL_ERROR)


def encode_reason(reason: str) -> bytes:
    """Encode a RESET/GOAWAY reason as UTF-8, cut to MAX_REASON_LENGTH bytes.

    The cut never splits a character, so the result always decodes.
    """
    raw = reason.encode("utf-8", "replace")
    if len(raw) <= MAX_REASON_LENGTH:
        return raw
    return raw[:MAX_REASON_LENGTH].decode("utf-8", "ignore").encode("utf-8")


@dataclass(frozen=True, slots=True)
class Frame:
    """One tunnel v1 frame.

    Build frames with the per-type constructors (:meth:`data`, :meth:`open`, ...),
    read typed fields with the accessors (:attr:`increment`, :attr:`error_code`,
    ...), turn them into a websocket message with :meth:`serialize` and back with
    :meth:`parse`.

    Attributes:
        type: The frame type.
        stream_id: 0 for the session, else the stream.
        payload: Raw payload bytes.
        flags: Reserved in v1: sent as 0, ignored on receipt.
    """

    type: FrameType
    stream_id: int
    payload: bytes = b""
    flags: int = 0

    # --- constructors (one per type) ---------------------------------------

    @classmethod
    def data(cls, stream_id: int, payload: bytes) -> Frame:
        """DATA: stream bytes; only the payload counts against flow control."""
        return cls(FrameType.DATA, stream_id, bytes(payload))

    @classmethod
    def open(cls, stream_id: int, target: bytes) -> Frame:
        """OPEN: ask the peer to open ``stream_id`` to ``target`` (1..MAX_TARGET_LENGTH bytes)."""
        return cls(FrameType.OPEN, stream_id, bytes(target))

    @classmethod
    def open_ok(cls, stream_id: int) -> Frame:
        """OPEN_OK: the receiver of OPEN accepts the stream."""
        return cls(FrameType.OPEN_OK, stream_id)

    @classmethod
    def window(cls, stream_id: int, increment: int) -> Frame:
        """WINDOW: grant ``increment`` more DATA bytes on a stream (or the session, id 0)."""
        return cls(FrameType.WINDOW, stream_id, _U32.pack(increment))

    @classmethod
    def fin(cls, stream_id: int) -> Frame:
        """FIN: the sender will send no more DATA on the stream (half close)."""
        return cls(FrameType.FIN, stream_id)

    @classmethod
    def reset(cls, stream_id: int, code: ErrorCode, reason: str = "") -> Frame:
        """RESET: abort the stream both ways with ``code`` and a short reason."""
        return cls(FrameType.RESET, stream_id, _U32.pack(code) + encode_reason(reason))

    @classmethod
    def ping(cls, payload: bytes) -> Frame:
        """PING: 8 opaque bytes the peer echoes in a PONG."""
        return cls(FrameType.PING, 0, bytes(payload))

    @classmethod
    def pong(cls, payload: bytes) -> Frame:
        """PONG: the answer to a PING, same payload."""
        return cls(FrameType.PONG, 0, bytes(payload))

    @classmethod
    def goaway(cls, last_stream_id: int, code: ErrorCode, reason: str = "") -> Frame:
        """GOAWAY: no new streams; peer streams above ``last_stream_id`` were not processed."""
        return cls(
            FrameType.GOAWAY, 0, _U32_PAIR.pack(last_stream_id, code) + encode_reason(reason)
        )

    # --- typed accessors (valid after check()) -----------------------------

    @property
    def target(self) -> bytes:
        """OPEN: the target bytes."""
        return self.payload

    @property
    def increment(self) -> int:
        """WINDOW: the credit increment."""
        return int(_U32.unpack_from(self.payload)[0])

    @property
    def error_code(self) -> ErrorCode:
        """RESET/GOAWAY: the error code (unknown values read as INTERNAL_ERROR)."""
        offset = 4 if self.type is FrameType.GOAWAY else 0
        return decode_error_code(_U32.unpack_from(self.payload, offset)[0])

    @property
    def reason(self) -> str:
        """RESET/GOAWAY: the reason text (invalid UTF-8 replaced, never an error)."""
        offset = 8 if self.type is FrameType.GOAWAY else 4
        return self.payload[offset:].decode("utf-8", "replace")

    @property
    def last_stream_id(self) -> int:
        """GOAWAY: the highest peer-initiated stream id the sender processed."""
        return int(_U32.unpack_from(self.payload)[0])

    def summary(self) -> str:
        """A fixed-width one-line description for debug logs, without payload bytes.

        Example: ``"WINDOW  stream=3          +524288"``.
        """
        ftype = self.type
        if ftype is FrameType.WINDOW:
            detail = f"+{self.increment}"
        elif ftype is FrameType.RESET or ftype is FrameType.GOAWAY:
            detail = self.error_code.name
            if ftype is FrameType.GOAWAY:
                detail = f"last={self.last_stream_id} {detail}"
        else:
            detail = f"{len(self.payload)}B"
        return f"{ftype.name:<7} stream={self.stream_id:<10} {detail}"

    # --- wire ----------------------------------------------------------------

    def serialize(self) -> bytes:
        """Return the websocket binary message for this frame.

        Raises:
            LocalProtocolError: the frame breaks a rule of :meth:`check`.
        """
        self.check(MAX_RECEIVE_PAYLOAD)
        return _pack_header(self.type, self.flags, self.stream_id) + self.payload

    @classmethod
    def parse(cls, message: bytes, max_payload: int = MAX_RECEIVE_PAYLOAD) -> Frame:
        """Parse and check one websocket binary message.

        Args:
            message: The whole message.
            max_payload: Largest payload accepted (any frame type).

        Returns:
            The checked frame.

        Raises:
            LocalProtocolError: malformed frame, with the wire code to report
                (FRAME_SIZE_ERROR, PROTOCOL_ERROR or FLOW_CONTROL_ERROR).
        """
        if len(message) < HEADER_SIZE:
            raise LocalProtocolError("frame shorter than its header", ErrorCode.FRAME_SIZE_ERROR)
        if len(message) - HEADER_SIZE > max_payload:
            raise LocalProtocolError("frame payload too large", ErrorCode.FRAME_SIZE_ERROR)
        raw_type, flags, stream_id = HEADER.unpack_from(message)
        try:
            frame_type = FrameType(raw_type)
        except ValueError:
            raise LocalProtocolError(
                f"unknown frame type {raw_type:#x}", ErrorCode.PROTOCOL_ERROR
            ) from None
        frame = cls(frame_type, stream_id, bytes(message[HEADER_SIZE:]), flags)
        frame.check(max_payload)
        return frame

    def check(self, max_payload: int = MAX_RECEIVE_PAYLOAD) -> None:
        """Check every per-type rule of PROTOCOL.md (lengths, stream id 0 or not).

        Args:
            max_payload: Largest payload allowed.

        Raises:
            LocalProtocolError: with FRAME_SIZE_ERROR for a bad length,
                FLOW_CONTROL_ERROR for a WINDOW increment above 2**31-1, else
                PROTOCOL_ERROR.
        """
        ftype, sid, size = self.type, self.stream_id, len(self.payload)
        if not 0 <= self.flags <= 0xFF:
            raise LocalProtocolError("flags out of range", ErrorCode.PROTOCOL_ERROR)
        if not 0 <= sid <= MAX_STREAM_ID:
            raise LocalProtocolError("reserved stream id bit set", ErrorCode.PROTOCOL_ERROR)
        if size > max_payload:
            raise LocalProtocolError("frame payload too large", ErrorCode.FRAME_SIZE_ERROR)
        if ftype in _STREAM_TYPES and sid == 0:
            raise LocalProtocolError(f"{ftype.name} on stream 0", ErrorCode.PROTOCOL_ERROR)
        if ftype in _SESSION_TYPES and sid != 0:
            raise LocalProtocolError(f"{ftype.name} on a stream", ErrorCode.PROTOCOL_ERROR)
        expected = _SIZE_RULES.get(ftype)
        if expected is not None and not expected[0] <= size <= expected[1]:
            raise LocalProtocolError(
                f"{ftype.name} payload of {size} bytes", ErrorCode.FRAME_SIZE_ERROR
            )
        if ftype is FrameType.WINDOW:
            increment = self.increment
            if increment == 0:
                raise LocalProtocolError("WINDOW increment of 0", ErrorCode.PROTOCOL_ERROR)
            if increment > MAX_WINDOW_SIZE:
                raise LocalProtocolError(
                    "WINDOW increment above 2**31-1", ErrorCode.FLOW_CONTROL_ERROR
                )
        elif ftype is FrameType.GOAWAY and self.last_stream_id & _RESERVED_BIT:
            raise LocalProtocolError("GOAWAY last stream id reserved bit", ErrorCode.PROTOCOL_ERROR)


# Allowed payload sizes (inclusive) per type; DATA is bounded by max_payload only.
_SIZE_RULES: dict[FrameType, tuple[int, int]] = {
    FrameType.OPEN: (1, MAX_TARGET_LENGTH),
    FrameType.OPEN_OK: (0, 0),
    FrameType.WINDOW: (4, 4),
    FrameType.FIN: (0, 0),
    FrameType.RESET: (4, 4 + MAX_REASON_LENGTH),
    FrameType.PING: (PING_PAYLOAD_LENGTH, PING_PAYLOAD_LENGTH),
    FrameType.PONG: (PING_PAYLOAD_LENGTH, PING_PAYLOAD_LENGTH),
    FrameType.GOAWAY: (8, 8 + MAX_REASON_LENGTH),
}
