"""RFC 6455 framing for the native websocket transport (aio_ws_native.py):
opcodes, close codes, the frame encoder with client masking, and the bounds
of the transport.

Masking uses ``websockets.speedups.apply_mask`` (C); mask keys come from
``os.urandom`` in blocks. Decoding lives in the protocol (``NativeWebSocket``),
which parses in place from its read buffer.
"""

from __future__ import annotations

import os
import struct

from websockets.speedups import apply_mask

__all__ = [
    "CLOSE_INVALID_DATA",
    "CLOSE_MESSAGE_TOO_BIG",
    "INBOX_HIGH",
    "INBOX_LOW",
    "MAX_HEAD_BYTES",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "VALID_CLOSE_CODES",
    "apply_mask",
    "encode_frame",
    "frame_pieces",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_INVALID_DATA = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
# Close codes a peer may send (RFC 6455 section 7.4): 1004-1006 and 1015 are
# reserved for local use, 1000-2999 otherwise defined by the RFC and IANA.
VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
# Mask keys are drawn from os.urandom in blocks: one system call per 1024 frames.
_MASK_BLOCK = 4096
# Largest HTTP head (a proxy's CONNECT answer, the upgrade request or
# response) before the websocket starts: aiohttp's own line and field limits
# are 8 KiB each; a peer that sends more without the blank line is cut off.
MAX_HEAD_BYTES = 16 * 1024
# Messages waiting for receive() (push delivery off, or queued behind a text
# or close): above the high mark the socket stops being read until the
# session has taken them down to the low mark. The tunnel's credit bounds
# DATA anyway; this bounds what a peer's unsolicited messages can pile up.
INBOX_HIGH = 64
INBOX_LOW = 16


class _MaskKeys:
    """Unpredictable 4-byte mask keys (RFC 6455 section 5.3), drawn in blocks."""

    __slots__ = ("_block", "_pos")

    def __init__(self) -> None:
        self._block = b""
        self._pos = _MASK_BLOCK

    def next(self) -> bytes:
        pos = self._pos
        if pos >= _MASK_BLOCK:
            self._block = os.urandom(_MASK_BLOCK)
            pos = 0
        self._pos = pos + 4
        return self._block[pos:pos + 4]


_KEYS = _MaskKeys()


def frame_pieces(opcode: int, payload: bytes, mask: bool, out: list[bytes], fin: bool = True) -> None:
    """Append one frame to ``out`` as header (with the mask key when
    ``mask``) and payload (masked), for one ``b"".join`` of a whole batch:
    each payload is copied once into the batch, not once per frame first."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 65536:
        header = _LEN16.pack(first, mask_bit | 126, n)
    else:
        header = _LEN64.pack(first, mask_bit | 127, n)
    if mask:
        key = _KEYS.next()
        out.append(header + key)
        out.append(apply_mask(payload, key))
    else:
        out.append(header)
        out.append(payload)


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """One websocket frame (header, mask key when ``mask``, payload) as bytes."""
    out: list[bytes] = []
    frame_pieces(opcode, payload, mask, out, fin)
    return b"".join(out)
