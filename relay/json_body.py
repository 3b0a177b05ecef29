"""Bounded reading and parsing of a JSON request body.

A body is read in full (it may arrive in many TCP pieces) up to a byte limit,
its nesting depth is checked on the raw bytes before ``json.loads`` sees it
(50,000 ``[`` would otherwise end in ``RecursionError``), and only then is it
parsed. Every failure is a :class:`BodyRefused` carrying the status, code and
one-line message to answer with.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["MAX_BODY_BYTES", "MAX_BODY_DEPTH", "BodyRefused", "nesting_exceeds", "read_json_object"]

# The largest legitimate body is a cluster registration with two PEM
# certificate chains: a few KB. 64 KiB leaves room for long chains.
MAX_BODY_BYTES = 64 * 1024
# Our bodies are flat objects of strings; 32 levels is far more than any need.
MAX_BODY_DEPTH = 32

_OPEN, _CLOSE, _QUOTE, _BACKSLASH = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


class BodyRefused(Exception):
    """The body cannot be accepted; ``status``/``code``/``message`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def nesting_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether arrays/objects in ``raw`` nest deeper than ``max_depth``
    (brackets inside JSON strings do not count). Linear, no recursion."""
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > max_depth:
                return True
        elif byte in _CLOSE:
            depth -= 1
    return False


async def _read_limited(request: web.Request, max_bytes: int) -> bytes:
    too_large = BodyRefused(413, "PayloadTooLarge", f"request body exceeds {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived so far: loop until EOF or past the limit.
    while chunk := await request.content.read(max_bytes + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise too_large
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_json_object(request: web.Request, *, max_bytes: int = MAX_BODY_BYTES,
                           max_depth: int = MAX_BODY_DEPTH) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``).

    Raises:
        BodyRefused: 413 over ``max_bytes``; 400 when nested deeper than
            ``max_depth``, not UTF-8 JSON, or not an object.
    """
    raw = await _read_limited(request, max_bytes)
    if nesting_exceeds(raw, max_depth):
        raise BodyRefused(400, "InvalidRequest", f"request body nests deeper than {max_depth} levels")
    try:
        body = json.loads(raw or b"{}", parse_constant=_reject_constant)
    except ValueError:  # also UnicodeDecodeError and over-long integers
        raise BodyRefused(400, "InvalidRequest", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BodyRefused(400, "InvalidRequest", "request body must be a JSON object")
    return body
