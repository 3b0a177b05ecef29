"""kube-aad-proxy's sans-I/O readers: message boundaries and refusals,
whatever the read boundaries are."""

from __future__ import annotations

import base64
import itertools
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.kube_aad_proxy.config import MAX_HEAD_BYTES
from agent.kube_aad_proxy.framing import Chunked, FramingError
from agent.kube_aad_proxy.oidc import peek_issuer
from agent.kube_aad_proxy.requests import BodyReceived, HeadReceived, RequestInvalid, RequestReader
from agent.kube_aad_proxy.responses import (
    Exchange,
    ResponseDone,
    ResponseInvalid,
    ResponseReader,
    Upgraded,
)

PIPELINE = (
    b"GET /a HTTP/1.1\r\nHost: k\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: k\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /c HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    b"GET /d HTTP/1.1\r\nHost: k\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    b"raw after upgrade GET /e HTTP/1.1\r\n\r\n"
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def run_requests(pieces: list[bytes]) -> tuple[list[tuple[str, bytes]], bytes]:
    reader = RequestReader(MAX_HEAD_BYTES)
    out: list[tuple[str, bytes]] = []
    for piece in pieces:
        for ev in reader.feed(piece):
            if isinstance(ev, HeadReceived):
                out.append((ev.head.target.decode(), b""))
            elif isinstance(ev, BodyReceived):
                out[-1] = (out[-1][0], out[-1][1] + ev.data)
            else:
                out.append(("invalid", ev.message.encode()))
    return out, bytes(reader.held)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_request_reader_finds_same_boundaries_for_any_split(cuts: list[int]) -> None:
    """Pipelined heads, raw bodies and held post-upgrade bytes do not depend on read sizes."""
    events, held = run_requests(split(PIPELINE, cuts))
    assert events == [
        ("/a", b""),
        ("/b", b"hello"),
        ("/c", b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"),
        ("/d", b""),
    ]
    assert held == b"raw after upgrade GET /e HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "Content-Length"),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "Content-Length"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (b"GET / HTTP/1.1\r\nX: a\r\n Impersonate-User: admin\r\n\r\n", "folding"),
        (b"GET / HTTP/1.1\nHost: k\r\n\r\n", "bare LF"),
        (b"GET / HTTP/1.1\r\nImpersonate-User : admin\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "NUL"),
        (b"CONNECT k:443 HTTP/1.1\r\nHost: k\r\n\r\n", "CONNECT"),
        (b"GET / HTTP/2.0\r\nHost: k\r\n\r\n", ""),
    ],
)
def test_request_reader_refuses_ambiguous_heads(raw: bytes, why: str) -> None:
    """Heads the API server might read differently are refused, never forwarded."""
    events = RequestReader(MAX_HEAD_BYTES).feed(raw + b"GET /next HTTP/1.1\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], RequestInvalid)
    assert why in events[0].message


@pytest.mark.parametrize("size_line", [b"0x5", b"+5", b" 5", b"5 5", b"", b"g", b"1" * 16])
def test_chunked_framer_refuses_malformed_sizes(size_line: bytes) -> None:
    """Chunk sizes are strict hex (smuggling defence)."""
    with pytest.raises(FramingError):
        Chunked().feed(size_line + b"\r\nhello\r\n0\r\n\r\n", 0)


def test_request_reader_answers_431_for_huge_head() -> None:
    """A head larger than the limit is refused with 431."""
    reader = RequestReader(1024)
    events = reader.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000)
    assert isinstance(events[-1], RequestInvalid) and events[-1].status == 431


def exchange(method: str = "GET", upgrade: bool = False) -> Exchange:
    return Exchange(method, "/", "p", 0.0, upgrade, True)


RESPONSES = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # HEAD: no body
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes"
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_response_reader_relays_all_bytes_and_ends_at_upgrade(cuts: list[int]) -> None:
    """Every byte is relayed once, responses complete in order (1xx, HEAD, 204, chunked), then 101 splices."""
    pending = deque([exchange(), exchange("HEAD"), exchange(), exchange(), exchange(upgrade=True)])
    reader = ResponseReader(pending, MAX_HEAD_BYTES)
    relayed, done, upgraded = b"", [], None
    for piece in split(RESPONSES, cuts):
        if upgraded is not None:
            relayed += piece
            continue
        for ev in reader.feed(piece):
            if isinstance(ev, bytes):
                relayed += ev
            elif isinstance(ev, ResponseDone):
                done.append(ev.exchange.status)
            elif isinstance(ev, Upgraded):
                upgraded = ev
                relayed += ev.rest
    assert relayed == RESPONSES
    assert done == [200, 200, 204, 200]
    assert upgraded is not None and not pending


def test_response_reader_refuses_101_without_upgrade_request() -> None:
    """A 101 to a plain request is a protocol error (the connection is dropped)."""
    reader = ResponseReader(deque([exchange()]), MAX_HEAD_BYTES)
    events = reader.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert isinstance(events[-1], ResponseInvalid)


def test_response_reader_closes_after_failed_upgrade() -> None:
    """A non-101 answer to an upgrade request ends the connection."""
    reader = ResponseReader(deque([exchange(upgrade=True), exchange()]), MAX_HEAD_BYTES)
    events = reader.feed(b"HTTP/1.1 400 Bad\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\n\r\n")
    assert isinstance(events[-1], ResponseDone) and events[-1].close
    assert b"".join(e for e in events if isinstance(e, bytes)).endswith(b"no")


def test_peek_issuer_survives_hostile_tokens() -> None:
    """Deeply nested or garbage JWT payloads choose the pass-through path, never crash."""
    nested = base64.urlsafe_b64encode(b"[" * 10000).rstrip(b"=").decode()
    assert peek_issuer(f"a.{nested}.c") is None
    assert peek_issuer("a.!!!.c") is None
    assert peek_issuer("not-a-jwt") is None
    good = base64.urlsafe_b64encode(b'{"iss":"https://i"}').rstrip(b"=").decode()
    assert peek_issuer(f"a.{good}.c") == "https://i"
