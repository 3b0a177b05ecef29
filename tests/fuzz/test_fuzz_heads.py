"""Fuzzing kube-aad-proxy's head parsing and body framing (hypothesis).

Properties: a head (random bytes, or a generated head with hostile methods,
targets and headers) either parses or raises ``HeadError``; a parsed head's
framing either is chosen or raises ``HeadError``; a framer fed random body
bytes raises only ``FramingError``, and it answers the same whether the bytes
arrive in one piece or in many (TCP splits must not change where a message
ends). Budget: ~200 examples each, no deadline.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.kube_aad_proxy.framing import (
    BodyFramer,
    Chunked,
    FramingError,
    request_framer,
    response_framer,
)
from agent.kube_aad_proxy.heads import (
    HEAD_END,
    HeadError,
    RequestHead,
    parse_request_head,
    parse_response_head,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TOKEN = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"CONNECT", b"OPTIONS",
                          b"G\x00T", b"get", b""])
_BYTES = st.binary(max_size=40)
_HEADER_NAMES = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                                 b"Upgrade", b"Authorization", b"Impersonate-User", b"X-Remote-User",
                                 b"content-length", b"Transfer-Encoding "]) | _BYTES
_HEADER_VALUES = st.sampled_from([b"chunked", b"gzip, chunked", b"chunked, gzip", b"0", b"5", b"-1",
                                  b"99999999999999999999", b"5, 5", b"5, 6", b"Upgrade", b"close",
                                  b"keep-alive", b"websocket", b" chunked"]) | _BYTES
_SEPARATORS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """A request head built from hostile pieces, ending in CRLF CRLF."""
    method = draw(_TOKEN)
    target = draw(st.sampled_from([b"/api/v1/pods", b"/", b"*", b"http://x/", b"/a?b=\x7f"]) | _BYTES)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"XYZ"]))
    lines = [method + b" " + target + b" " + version]
    for _ in range(draw(st.integers(0, 6))):
        sep = draw(st.sampled_from([b": ", b":", b" : ", b""]))
        lines.append(draw(_HEADER_NAMES) + sep + draw(_HEADER_VALUES))
    joiner = draw(_SEPARATORS)
    return joiner.join(lines) + HEAD_END


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    """A response head built from hostile pieces, ending in CRLF CRLF."""
    status = draw(st.sampled_from([b"200", b"101", b"204", b"304", b"999", b"0", b"2000", b"abc"]))
    lines = [draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9"])) + b" " + status + b" OK"]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(_HEADER_NAMES) + b": " + draw(_HEADER_VALUES))
    return draw(_SEPARATORS).join(lines) + HEAD_END


def _feed_all(framer: BodyFramer, data: bytes, cuts: list[int]) -> tuple[int, bool]:
    """Feed ``data`` in pieces cut at ``cuts`` (as arrivals append to a buffer)
    and return where the message ends and whether it completed."""
    end, done, received = 0, False, 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if cut <= received or done:
            continue
        received = cut
        end, done = framer.feed(data[:received], end)
    return end, done


def _framing_outcome(make: Callable[[], BodyFramer], data: bytes, cuts: list[int]) -> object:
    try:
        return _feed_all(make(), data, cuts)
    except FramingError:
        return "FramingError"


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_as_request_head_raise_only_head_error(raw: bytes) -> None:
    """Random bytes ending in CRLF CRLF: a RequestHead or HeadError, nothing else."""
    try:
        head = parse_request_head(raw + HEAD_END)
    except HeadError:
        return
    assert isinstance(head, RequestHead)


@FUZZ
@given(request_heads())
def test_fuzz_request_heads_parse_then_frame_or_refuse(raw: bytes) -> None:
    """Generated hostile heads: parse and choose a framer, or HeadError."""
    try:
        head = parse_request_head(raw)
        framer = request_framer(head.headers)
    except HeadError:
        return
    assert head.raw == raw and head.method.isascii()
    assert b"\r\n " not in raw and b"\x00" not in raw
    assert isinstance(framer, BodyFramer)


@FUZZ
@given(response_heads(), st.sampled_from(["GET", "HEAD", "POST"]))
def test_fuzz_response_heads_parse_then_frame_or_refuse(raw: bytes, method: str) -> None:
    """Generated hostile response heads: parse and frame, or HeadError."""
    try:
        head = parse_response_head(raw)
        framer = response_framer(method, head.status, head.headers)
    except HeadError:
        return
    assert isinstance(framer, BodyFramer)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """Mostly-valid chunked bodies with hostile mutations."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(max_size=30))
        size = draw(st.sampled_from([f"{len(data):x}".encode(), f"{len(data):X}".encode(), b"zz",
                                     f"{len(data) + 1:x}".encode(), b"f" * 16]))
        ext = draw(st.sampled_from([b"", b";a=b", b" ;x", b";\n"]))
        parts.append(size + ext + draw(_SEPARATORS) + data + draw(_SEPARATORS))
    parts.append(b"0" + draw(st.sampled_from([b"\r\n", b"\r\nTrailer: x\r\n", b"\n"])) + b"\r\n")
    return b"".join(parts) + draw(st.binary(max_size=20))


@FUZZ
@given(chunked_bodies() | st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_fuzz_chunked_framing_is_split_invariant(body: bytes, cuts: list[int]) -> None:
    """One piece or many: the same end (or the same FramingError)."""
    assert _framing_outcome(Chunked, body, []) == _framing_outcome(Chunked, body, cuts)
