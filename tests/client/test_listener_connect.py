"""arc-proxy's listener as an HTTP CONNECT proxy (kubeconfig proxy-url) on the
same port as the direct TLS shape: CONNECT gets 200 and the splice; a refused
CONNECT carries the cause in its reason phrase (what kubectl prints); other
requests, oversized or slow heads are answered and closed. Real sockets and a
real tunnel session pair on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from client.connect_head import (
    MAX_REASON_PHRASE,
    MAX_REQUEST_HEAD,
    REQUEST_HEAD_WAIT,
    sanitise_phrase,
)
from client.listener import LocalListener
from tests.client.test_listener_relay_lost import LostRelayKeeper
from tests.client.test_listener_resets import FixedKeeper, _echo_check, rig
from tests.support.waits import until
from tests.tunnel.test_aio import WAIT, tunnel_pair
from tunnel import ErrorCode, TunnelStream

pytestmark = pytest.mark.timeout(60)

CONNECT = b"CONNECT demo.rg.arc-proxy.invalid:443 HTTP/1.1\r\nHost: demo.rg.arc-proxy.invalid:443\r\n\r\n"


async def _status(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT):
        return await reader.readline()


async def test_connect_gets_200_then_bytes_flow_both_ways() -> None:
    """200 Connection established; bytes sent with the head and after it reach
    the cluster side byte-exact, and the answer comes back."""
    async with rig() as r:
        r.listener.connect_authority = "demo.rg.arc-proxy.invalid:443"
        reader, writer = await r.connect()
        writer.write(CONNECT + b"e")  # the first tunnel byte rides with the head
        assert await _status(reader) == b"HTTP/1.1 200 Connection established\r\n"
        assert await reader.readline() == b"\r\n"
        async with asyncio.timeout(WAIT):
            await _echo_check(reader, writer, 7)
        writer.close()


async def test_direct_tls_shape_still_works_on_the_same_port() -> None:
    """A connection whose first byte is not an HTTP method is spliced untouched."""
    async with rig() as r:
        reader, writer = await r.connect()
        writer.write(b"e")
        async with asyncio.timeout(WAIT):
            await _echo_check(reader, writer, 3)
        writer.close()


async def test_connect_while_relay_lost_is_503_with_the_cause() -> None:
    """The reason phrase names the relay's cause and the retry pace; one line."""
    keeper = LostRelayKeeper()
    listener = LocalListener(keeper, b"rg/c", port=0)  # type: ignore[arg-type]
    await listener.bind()
    await listener.serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(CONNECT)
        line = await _status(reader)
        assert line.startswith(b"HTTP/1.1 503 arc-proxy: cannot reach the relay at https://relay.test: "
                               b"connection was refused; arc-proxy retries at least every 1 s"), line
        async with asyncio.timeout(WAIT):
            rest = await reader.read()  # headers, then closed
        assert b"Connection: close" in rest
        writer.close()
    finally:
        await listener.close()


async def test_connect_forbidden_is_403_with_the_fix() -> None:
    """A stream refused FORBIDDEN at OPEN: 403 and the ask-an-admin line."""
    async def agent(stream: TunnelStream) -> None:
        stream.reject(ErrorCode.FORBIDDEN, "user alice may not reach rg/demo")

    async with tunnel_pair(agent) as pair:
        listener = LocalListener(FixedKeeper(pair.client), b"rg/demo", port=0)  # type: ignore[arg-type]
        await listener.bind()
        await listener.serve()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(CONNECT)
            line = await _status(reader)
            assert line.startswith(b"HTTP/1.1 403 arc-proxy: user alice may not reach rg/demo: "
                                   b"arc-proxy needs the cluster-user role on cluster rg/demo"), line
            writer.close()
        finally:
            await listener.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
    (b"CONNECT nohostport HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT other.example:443 HTTP/1.1\r\n\r\n", b"404"),
    (b"CONNECT demo.rg.arc-proxy.invalid:443 HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n",
     b"431"),
])
async def test_other_requests_are_answered_and_closed(request_bytes: bytes, status: bytes) -> None:
    """Not CONNECT: 405 (Allow: CONNECT); malformed: 400; another host: 404;
    a head over MAX_REQUEST_HEAD: 431. No stream is used for any."""
    async with rig() as r:
        r.listener.connect_authority = "demo.rg.arc-proxy.invalid:443"
        reader, writer = await r.connect()
        writer.write(request_bytes)
        line = await _status(reader)
        assert line.startswith(b"HTTP/1.1 " + status + b" "), line
        async with asyncio.timeout(WAIT):
            rest = await reader.read()
        if status == b"405":
            assert b"Allow: CONNECT" in rest
        writer.close()
        # The stream opened at accept is given back: none stays open or pending.
        await until(lambda: r.listener._pending_opens == 0 and r.pair.client.streams == 0,
                    "the unused stream reset and the pending count back to 0")


async def test_a_slow_connect_head_gets_408_after_the_wait() -> None:
    """A head that never completes is answered 408 once REQUEST_HEAD_WAIT passed."""
    async with rig() as r:
        reader, writer = await r.connect()
        writer.write(b"CONNECT demo.rg.arc-proxy.invalid:443 HTTP/1.1\r\n")  # no blank line
        async with asyncio.timeout(REQUEST_HEAD_WAIT + WAIT):
            line = await reader.readline()
        assert line.startswith(b"HTTP/1.1 408 "), line
        writer.close()


def test_reason_phrase_is_printable_ascii_one_line_and_bounded() -> None:
    """CR/LF and control or non-ASCII characters never reach the status line."""
    phrase = sanitise_phrase("bad\r\nInjected: yes\x1b[31m caf\u00e9 " + "x" * 1000)
    assert "\r" not in phrase and "\n" not in phrase and "\x1b" not in phrase
    assert all(" " <= c <= "~" for c in phrase)
    assert len(phrase) == MAX_REASON_PHRASE and phrase.endswith("...")
    assert phrase.startswith("bad Injected: yes?[31m caf? x")


def test_reason_phrase_never_says_connection_refused() -> None:
    """kubectl swaps any "connection refused" error for its own "did you specify
    the right host or port?": the phrase rewords it so the cause stays visible."""
    assert sanitise_phrase("relay: connection refused; is it running?") == \
        "relay: connection was refused; is it running?"
