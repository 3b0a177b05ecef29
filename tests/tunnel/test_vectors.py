"""Hex test vectors of tunnel/PROTOCOL.md: one case table drives encode and decode."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunnel.connection import Connection
from tunnel.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel.frames import Frame

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "tunnel" / "PROTOCOL.md"

# name -> the frame the PROTOCOL.md row describes. The hex comes from the document,
# so the document and the code cannot drift apart.
VALID: dict[str, Frame] = {
    "data": Frame.data(1, b"hello"),
    "data-empty": Frame.data(3, b""),
    "open": Frame.open(1, b"rg/demo"),
    "open-ok": Frame.open_ok(2),
    "window-session": Frame.window(0, 8 * 1024 * 1024),
    "window-stream": Frame.window(3, 512 * 1024),
    "window-max": Frame.window(1, 2**31 - 1),
    "fin": Frame.fin(5),
    "reset": Frame.reset(7, ErrorCode.CONNECT_FAILED, "refused"),
    "reset-no-reason": Frame.reset(2, ErrorCode.CANCEL),
    "ping": Frame.ping(bytes(range(1, 9))),
    "pong": Frame.pong(bytes(range(1, 9))),
    "goaway": Frame.goaway(4, ErrorCode.NO_ERROR, "bye"),
    "data-high-id": Frame.data(2**31 - 1, b"x"),
}


def _document_rows() -> tuple[dict[str, bytes], dict[str, tuple[bytes, ErrorCode]]]:
    """Parse the two vector tables of PROTOCOL.md."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text.split("## Test vectors", 1)[1]
    valid: dict[str, bytes] = {}
    invalid: dict[str, tuple[bytes, ErrorCode]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0] or cells[0] in {"name", "---"}:
            continue
        hex_cell = [c for c in cells if re.fullmatch(r"`[0-9a-f ]+`", c)]
        if not hex_cell:
            continue
        raw = bytes.fromhex(hex_cell[0].strip("`"))
        if cells[2] in ErrorCode.__members__:
            invalid[cells[0]] = (raw, ErrorCode[cells[2]])
        else:
            valid[cells[0]] = raw
    return valid, invalid


DOC_VALID, DOC_INVALID = _document_rows()


def test_vectors_document_and_case_table_list_same_frames() -> None:
    """Every documented vector has a case here and every case is documented."""
    assert set(DOC_VALID) == set(VALID)
    assert len(DOC_INVALID) >= 10


@pytest.mark.parametrize("name", sorted(VALID))
def test_vectors_encode_to_documented_hex(name: str) -> None:
    """serialize() produces exactly the bytes PROTOCOL.md shows."""
    assert VALID[name].serialize() == DOC_VALID[name]


@pytest.mark.parametrize("name", sorted(VALID))
def test_vectors_decode_from_documented_hex(name: str) -> None:
    """parse() of the documented bytes gives back the frame."""
    assert Frame.parse(DOC_VALID[name]) == VALID[name]


@pytest.mark.parametrize("name", sorted(DOC_INVALID))
def test_vectors_invalid_messages_fail_with_documented_code(name: str) -> None:
    """Each documented invalid message is refused with its code by the codec and,
    through a Connection, ends the session with a GOAWAY carrying that code."""
    raw, code = DOC_INVALID[name]
    with pytest.raises(LocalProtocolError) as parsed:
        Frame.parse(raw)
    assert parsed.value.error_code is code
    conn = Connection(is_client=True)
    with pytest.raises(RemoteProtocolError) as received:
        conn.receive(raw)
    assert received.value.error_code is code
    goaway = Frame.parse(conn.data_to_send()[-1])
    assert (goaway.type.name, goaway.error_code, goaway.reason) == ("GOAWAY", code, "")
