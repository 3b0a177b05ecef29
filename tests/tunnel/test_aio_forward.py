"""Tests of the task-free joins: frame-level forwarding between two sessions
(``splice_streams`` and ``join_streams``, tunnel/aio_forward.py) and stream
<-> TCP socket (``splice``, tunnel/aio_socket.py), over real loopback
websockets and sockets.

The "relay" here is a session pair in the middle: a client session talks to
a relay server session, whose handler opens a stream on a second session (the
relay as client of a far server) and joins the two, as relay/router.py does:
either awaiting the join (``splice_streams``) or handing the pair to it and
returning (``join_streams``); the stream-to-stream tests run both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator

import pytest

from tests.support.waits import until
from tests.tunnel.test_aio import (
    WAIT,
    Handler,
    Pair,
    _tcp_server,
    echo,
    read_all,
    tunnel_pair,
)
from tunnel import ErrorCode, StreamReset, TunnelStream, join_streams, splice, splice_streams
from tunnel.limits import INITIAL_STREAM_WINDOW

pytestmark = pytest.mark.timeout(60)


class Relay:
    """Client -> relay (server session) -> far server, joined per stream."""

    def __init__(self, join: bool) -> None:
        self.join = join
        # join_streams: on_done calls, and the streams' state at each call.
        self.done_calls: list[tuple[bool, bool]] = []
        self.near: Pair | None = None
        self.far: Pair | None = None
        self.joined: list[tuple[TunnelStream, TunnelStream]] = []
        self.forwarded = {"a_to_b": 0, "b_to_a": 0}
        self.hold_before_join = asyncio.Event()
        self.hold_before_join.set()

    async def handler(self, stream: TunnelStream) -> None:
        assert self.far is not None
        onward = await self.far.client.open_stream(stream.target)
        stream.accept()
        self.joined.append((stream, onward))
        await self.hold_before_join.wait()

        def count(key: str):  # type: ignore[no-untyped-def]
            def on_bytes(data: bytes | memoryview) -> None:
                self.forwarded[key] += len(data)

            return on_bytes

        if self.join:

            def on_done() -> None:
                self.done_calls.append((stream.done, onward.done))

            join_streams(
                stream, onward, on_a_to_b=count("a_to_b"), on_b_to_a=count("b_to_a"),
                on_done=on_done,
            )
            return  # the pair belongs to the join: the session leaves it open
        await splice_streams(
            stream, onward, on_a_to_b=count("a_to_b"), on_b_to_a=count("b_to_a")
        )


# The stream-to-stream tests run with the handler awaiting the join and with
# the handler handing the pair to join_streams and returning.
both_joins = pytest.mark.parametrize("join", [False, True], ids=["awaited", "join_streams"])


@contextlib.asynccontextmanager
async def relay_path(far_handler: Handler, join: bool = False) -> AsyncIterator[Relay]:
    """A client session whose streams the relay joins to ``far_handler``."""
    relay = Relay(join)
    async with tunnel_pair(far_handler) as far:
        relay.far = far
        async with tunnel_pair(relay.handler) as near:
            relay.near = near
            yield relay


@both_joins
async def test_splice_streams_forwards_bytes_exactly_both_ways_through_a_relay(join: bool) -> None:
    """Three streams of random-sized writes through the relay to an echo
    server: every byte comes back exactly, FIN travels end to end, and the
    metering callbacks saw every byte once each way."""
    rng = random.Random(3)
    async with relay_path(echo, join) as relay:
        assert relay.near is not None

        async def one(size: int) -> None:
            assert relay.near is not None
            stream = await relay.near.client.open_stream(b"echo")
            payload = os.urandom(size)

            async def send() -> None:
                view = memoryview(payload)
                while view:
                    n = rng.randint(1, 300_000)
                    await stream.write(view[:n])
                    view = view[n:]
                await stream.write_eof()

            sender = asyncio.create_task(send())
            assert await read_all(stream) == payload
            await sender

        sizes = [3_000_000, 500_000, 1]
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(one(n) for n in sizes))
            await until(lambda: relay.forwarded["b_to_a"] == sum(sizes), "metered")
        assert relay.forwarded == {"a_to_b": sum(sizes), "b_to_a": sum(sizes)}


@both_joins
async def test_splice_streams_holds_at_most_the_window_when_the_consumer_stalls(join: bool) -> None:
    """A far reader that stops reading stops the client's writer; the relay
    holds no more than the stream window it granted (it returns credit only
    for bytes passed on); once the reader resumes every byte arrives."""
    release = asyncio.Event()
    got: list[bytes] = []

    async def stalled_sink(stream: TunnelStream) -> None:
        stream.accept()
        await release.wait()
        got.append(await read_all(stream))

    async with relay_path(stalled_sink, join) as relay:
        assert relay.near is not None
        stream = await relay.near.client.open_stream(b"sink")
        window = relay.near.client.config.limits.stream_window  # each receiver grants this
        blob = os.urandom(8 * window)

        async def fill() -> None:
            await stream.write(blob)
            await stream.write_eof()

        filler = asyncio.create_task(fill())
        await until(lambda: stream._write_waiter is not None, "writer parked on credit")
        near_side, far_side = relay.joined[0]
        # What the relay holds is bounded by the window it granted the client;
        # what went on is bounded by the far side's window.
        assert near_side.buffered <= window
        assert stream.bytes_sent <= 2 * window
        assert far_side.bytes_sent <= window
        assert not filler.done()
        release.set()
        async with asyncio.timeout(WAIT):
            await filler
            await until(lambda: bool(got), "far side read everything")
        assert got[0] == blob


@both_joins
async def test_splice_streams_forwards_data_that_arrived_before_the_join(join: bool) -> None:
    """A far server that speaks first: its bytes wait in the relay's stream
    until the join starts, then reach the client exactly, before its FIN.
    (Unread, the relay's stream holds its initial window: the greeting fits.)"""
    greeting = os.urandom(INITIAL_STREAM_WINDOW - 1000)

    async def speaks_first(stream: TunnelStream) -> None:
        stream.accept()
        await stream.write(greeting)
        await stream.write_eof()
        await read_all(stream)

    async with relay_path(speaks_first, join) as relay:
        assert relay.near is not None
        relay.hold_before_join.clear()
        stream = await relay.near.client.open_stream(b"greet")
        await until(
            lambda: bool(relay.joined) and relay.joined[0][1].at_eof() is False
            and relay.joined[0][1]._eof,
            "the far side's bytes and FIN wait at the relay",
        )
        relay.hold_before_join.set()
        async with asyncio.timeout(WAIT):
            assert await read_all(stream) == greeting
        await stream.write_eof()


@both_joins
async def test_splice_streams_resets_the_client_when_the_far_session_dies(join: bool) -> None:
    """When the far session closes, the client's stream is reset (CANCEL)
    instead of hanging."""
    release = asyncio.Event()

    async def waits(stream: TunnelStream) -> None:
        stream.accept()
        await release.wait()

    async with relay_path(waits, join) as relay:
        assert relay.near is not None and relay.far is not None
        stream = await relay.near.client.open_stream(b"x")
        await stream.write(b"hello")
        await until(lambda: bool(relay.joined), "joined")
        await relay.far.client.close()
        with pytest.raises(StreamReset) as info:
            async with asyncio.timeout(WAIT):
                await read_all(stream)
        assert info.value.code == ErrorCode.CANCEL
        release.set()


async def test_join_streams_ends_with_fin_both_ways_then_calls_on_done_once() -> None:
    """join_streams: the relay's handler returned at once, yet bytes go both
    ways exactly; after FIN both ways both streams are closed and forgotten by
    their sessions, and on_done ran exactly once, after that."""
    async with relay_path(echo, join=True) as relay:
        assert relay.near is not None and relay.far is not None
        stream = await relay.near.client.open_stream(b"echo")
        payload = os.urandom(300_000)
        await stream.write(payload)
        await stream.write_eof()
        async with asyncio.timeout(WAIT):
            assert await read_all(stream) == payload
            await until(lambda: bool(relay.done_calls), "on_done called")
        assert relay.done_calls == [(True, True)]
        assert relay.near.server.streams == 0 and relay.far.client.streams == 0


async def test_join_streams_passes_a_reset_on_with_its_code_then_calls_on_done() -> None:
    """join_streams: a RESET from the far side reaches the client with the
    same code and reason; on_done runs once, both relay streams forgotten."""
    async def refuses_late(stream: TunnelStream) -> None:
        stream.accept()
        await stream.read()
        stream.reset(ErrorCode.CONNECT_FAILED, "upstream gone")

    async with relay_path(refuses_late, join=True) as relay:
        assert relay.near is not None and relay.far is not None
        stream = await relay.near.client.open_stream(b"x")
        await stream.write(b"hello")
        with pytest.raises(StreamReset) as info:
            async with asyncio.timeout(WAIT):
                await read_all(stream)
        assert (info.value.code, info.value.reason) == (ErrorCode.CONNECT_FAILED, "upstream gone")
        async with asyncio.timeout(WAIT):
            await until(lambda: bool(relay.done_calls), "on_done called")
        assert relay.done_calls == [(True, True)]
        assert relay.near.server.streams == 0 and relay.far.client.streams == 0


async def test_splice_socket_moves_bytes_exactly_with_random_chunks_and_half_close() -> None:
    """splice() to a TCP server that answers only after EOF, with random write
    sizes: our FIN arrives as EOF, the answer and its FIN come back exactly."""
    rng = random.Random(5)

    async def digest_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    tcp, port = await _tcp_server(digest_after_eof)

    async def handler(stream: TunnelStream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream.accept()
        await splice(stream, reader, writer)

    try:
        async with tunnel_pair(handler) as pair:
            stream = await pair.client.open_stream(b"tcp")
            payload = os.urandom(2_500_000)
            view = memoryview(payload)
            while view:
                n = rng.randint(1, 250_000)
                await stream.write(view[:n])
                view = view[n:]
            await stream.write_eof()
            async with asyncio.timeout(WAIT):
                assert await read_all(stream) == payload[::-1]
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_splice_socket_forwards_bytes_the_reader_buffered_before_splice() -> None:
    """A TCP server that speaks first: what asyncio's StreamReader already
    buffered before splice() took over the socket reaches the client."""
    greeting = os.urandom(100_000)

    async def speaks_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        writer.write_eof()
        await reader.read()
        writer.close()

    tcp, port = await _tcp_server(speaks_first)

    async def handler(stream: TunnelStream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(WAIT):
            while not reader.at_eof() and len(reader._buffer) < len(greeting):
                await asyncio.sleep(0.01)
        stream.accept()
        await splice(stream, reader, writer)

    try:
        async with tunnel_pair(handler) as pair:
            stream = await pair.client.open_stream(b"tcp")
            async with asyncio.timeout(WAIT):
                assert await read_all(stream) == greeting
            await stream.write_eof()
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_splice_socket_stops_the_writer_when_the_tcp_peer_stalls() -> None:
    """A TCP peer that does not read: acknowledgements stop once the socket
    buffer is full, so the client's writer parks on credit instead of the
    agent buffering without bound; once the peer reads, all bytes arrive."""
    release = asyncio.Event()
    received: list[int] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        received.append(total)
        writer.close()

    tcp, port = await _tcp_server(slow)

    async def handler(stream: TunnelStream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream.accept()
        await splice(stream, reader, writer)

    total = 256 * INITIAL_STREAM_WINDOW  # far more than any socket buffer
    try:
        async with tunnel_pair(handler) as pair:
            stream = await pair.client.open_stream(b"tcp")

            async def fill() -> None:
                chunk = b"z" * INITIAL_STREAM_WINDOW
                for _ in range(total // len(chunk)):
                    await stream.write(chunk)
                await stream.write_eof()

            filler = asyncio.create_task(fill())
            await until(lambda: stream._write_waiter is not None, "writer parked on credit")
            assert stream.bytes_sent < total
            release.set()
            async with asyncio.timeout(WAIT * 2):
                await filler
                await until(lambda: bool(received), "peer read everything")
            assert received[0] == total
    finally:
        tcp.close()
        await tcp.wait_closed()
