"""Decoding ``application/vnd.kubernetes.protobuf`` request bodies: the
``k8s\\0`` magic, the runtime.Unknown envelope, then the object by the
schema table in :mod:`proto_schema`, into the same dict its JSON form gives."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from sandbox.apiserver.proto_schema import DECODABLE_KINDS, SCHEMAS
from sandbox.apiserver.status import ApiError

MAGIC = b"k8s\x00"
# Nesting deeper than this is refused (no legitimate body comes close).
MAX_DEPTH = 32


class ProtoError(Exception):
    """The bytes are not valid protobuf for the expected message."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) in order; length-delimited values are bytes."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        val: Any
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ProtoError("truncated field")
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wt}")
        if pos > len(buf):
            raise ProtoError("truncated field")
        out.append((num, wt, val))
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _map_entry(raw: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for num, _wt, val in fields(raw):
        if num == 1:
            key = val.decode()
        elif num == 2:
            value = val
    return key, value


def _time(raw: bytes) -> str | None:
    seconds = 0
    for num, _wt, val in fields(raw):
        if num == 1:
            seconds = _signed(val)
    if seconds == 0:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_or_string(raw: bytes) -> int | str:
    kind, ival, sval = 0, 0, ""
    for num, _wt, val in fields(raw):
        if num == 1:
            kind = val
        elif num == 2:
            ival = _signed(val)
        elif num == 3:
            sval = val.decode()
    return sval if kind == 1 else ival


def _quantity(raw: bytes) -> str:
    return next((val.decode() for num, _wt, val in fields(raw) if num == 1), "0")


def decode_message(name: str, buf: bytes, depth: int = 0) -> dict[str, Any]:
    """One message by schema name; unknown field numbers are skipped."""
    if depth > MAX_DEPTH:
        raise ProtoError("nesting too deep")
    schema = SCHEMAS[name]
    out: dict[str, Any] = {}
    for num, _wt, val in fields(buf):
        spec = schema.get(num)
        if spec is None:
            continue
        key, typ, flags = spec
        if typ.startswith("map_"):
            k, v = _map_entry(val)
            m = out.setdefault(key, {})
            m[k] = (v.decode() if typ == "map_ss" else
                    base64.b64encode(v).decode() if typ == "map_sy" else _quantity(v))
            continue
        value: Any
        if typ == "s":
            value = val.decode()
        elif typ == "y":
            value = base64.b64encode(val).decode()
        elif typ == "i":
            value = _signed(val)
        elif typ == "b":
            value = bool(val)
        elif typ == "time":
            value = _time(val)
        elif typ == "q":
            value = _quantity(val)
        elif typ == "ios":
            value = _int_or_string(val)
        else:
            value = decode_message(typ, val, depth + 1)
        if "r" in flags:
            out.setdefault(key, []).append(value)
        elif "p" in flags or value not in ("", 0, False, None):
            out[key] = value
    return out


def decode_body(body: bytes) -> dict[str, Any]:
    """A full request body (magic + Unknown) to a JSON-shaped object.

    Raises:
        ApiError: 415 for a kind the sandbox cannot decode, 400 for bad bytes.
    """
    if not body.startswith(MAGIC):
        raise ApiError("BadRequest", "protobuf body without the k8s magic prefix")
    try:
        api_version = kind = ""
        raw = b""
        for num, _wt, val in fields(body[len(MAGIC):]):
            if num == 1:
                for n2, _w2, v2 in fields(val):
                    if n2 == 1:
                        api_version = v2.decode()
                    elif n2 == 2:
                        kind = v2.decode()
            elif num == 2:
                raw = val
        if kind not in DECODABLE_KINDS:
            raise ApiError("UnsupportedMediaType",
                           f"the sandbox cannot decode protobuf bodies of kind {kind!r}; send JSON", code=415)
        obj = decode_message(kind, raw)
    except (ProtoError, UnicodeDecodeError, ValueError) as exc:
        raise ApiError("BadRequest", "the protobuf request body could not be decoded") from exc
    obj = {"kind": kind, "apiVersion": api_version, **obj}
    meta = obj.get("metadata")
    if isinstance(meta, dict) and meta.get("creationTimestamp") is None:
        meta.pop("creationTimestamp", None)
    return obj
