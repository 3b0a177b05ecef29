"""arc-proxy's listener: a client connection that closes or resets at any
moment of its stream's life ends that stream only. The session (same object)
stays up with no GOAWAY either way, and another stream keeps moving bytes.

Real sockets on 127.0.0.1: kubectl-side clients -> LocalListener -> tunnel
session over a loopback websocket -> an agent-like handler that splices each
stream to a real TCP upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from client.listener import LocalListener
from tests.support.waits import until
from tests.tunnel.test_aio import WAIT, Pair, tunnel_pair
from tunnel import TunnelSession, TunnelStream, splice

pytestmark = pytest.mark.timeout(90)

FLOOD = 4 * 1024 * 1024  # what the upstream sends after b"f"


class FixedKeeper:
    """Stands in for RelaySessionKeeper: always the same session."""

    def __init__(self, session: TunnelSession) -> None:
        self.the_session = session
        self.calls = 0

    async def session(self) -> TunnelSession:
        self.calls += 1
        return self.the_session


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """b"e": echo until EOF; b"f": send FLOOD bytes, then echo."""
    try:
        mode = await reader.readexactly(1)
        if mode == b"f":
            writer.write(b"f" * FLOOD)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        await writer.drain()
        writer.close()
    except (ConnectionError, asyncio.IncompleteReadError):
        writer.transport.abort()


@dataclass
class Rig:
    """The whole client-side path, plus what the far side saw."""

    pair: Pair
    listener: LocalListener
    keeper: FixedKeeper
    admit: asyncio.Event
    opens: list[TunnelStream] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.listener.port)


@contextlib.asynccontextmanager
async def rig(max_pending_opens: int = 128) -> AsyncIterator[Rig]:
    """Listener + session pair + upstream; ``admit`` gates the far side's OPEN_OK."""
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    admit = asyncio.Event()
    admit.set()
    opens: list[TunnelStream] = []

    async def agent(stream: TunnelStream) -> None:
        opens.append(stream)
        await admit.wait()
        stream.accept()
        reader, writer = await asyncio.open_connection("127.0.0.1", up_port)
        await splice(stream, reader, writer)

    try:
        async with tunnel_pair(agent) as pair:
            keeper = FixedKeeper(pair.client)
            listener = LocalListener(
                keeper, b"rg/demo", port=0, max_pending_opens=max_pending_opens  # type: ignore[arg-type]
            )
            await listener.bind()
            await listener.serve()
            try:
                yield Rig(pair, listener, keeper, admit, opens)
            finally:
                await listener.close()
    finally:
        upstream.close()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter, rst: bool) -> None:
    if rst:
        _rst(writer)
    else:
        writer.close()


async def _echo_check(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    data = bytes([n % 251]) * 50_000
    writer.write(data)
    await writer.drain()
    assert await reader.readexactly(len(data)) == data


async def _before_open_ok(r: Rig, rst: bool) -> None:
    r.admit.clear()
    seen = len(r.opens)
    _, writer = await r.connect()
    await until(lambda: len(r.opens) > seen, "OPEN reached the far side")
    _close(writer, rst)
    await asyncio.sleep(0)  # let the listener notice nothing; the OPEN is still pending
    r.admit.set()


async def _mid_data_down(r: Rig, rst: bool) -> None:
    reader, writer = await r.connect()
    writer.write(b"f")
    await writer.drain()
    await reader.readexactly(300_000)  # part of the 4 MiB flood
    _close(writer, rst)


async def _mid_data_up(r: Rig, rst: bool) -> None:
    reader, writer = await r.connect()
    writer.write(b"e")
    writer.write(b"u" * 2_000_000)  # more than any window: still flowing when cut
    await reader.readexactly(100_000)
    _close(writer, rst)


async def _after_fin(r: Rig, rst: bool) -> None:
    reader, writer = await r.connect()
    writer.write(b"e" + b"x" * 100_000)
    writer.write_eof()
    await reader.readexactly(10_000)  # the echo is still coming back
    _close(writer, rst)


async def _after_both_fins(r: Rig, rst: bool) -> None:
    reader, writer = await r.connect()
    writer.write(b"ehello")
    writer.write_eof()
    assert await reader.read() == b"hello"  # upstream's FIN reached us
    _close(writer, rst)


MOMENTS = [_before_open_ok, _mid_data_down, _mid_data_up, _after_fin, _after_both_fins]


async def test_listener_client_closing_at_any_moment_ends_only_its_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every moment x {FIN close, RST via SO_LINGER 0}, beside a live stream:
    the live stream echoes byte-exact after each, the session object is the
    same and never closed or drained (no GOAWAY either way), the dead streams
    are all cleaned up on both sides, and no traceback is logged."""
    caplog.set_level(logging.INFO)
    async with rig() as r:
        session = r.pair.client
        live_reader, live_writer = await r.connect()
        live_writer.write(b"e")
        await _echo_check(live_reader, live_writer, 0)
        round_no = 0
        for rst in (False, True):
            for moment in MOMENTS:
                round_no += 1
                async with asyncio.timeout(WAIT):
                    await moment(r, rst)
                    await _echo_check(live_reader, live_writer, round_no)
                assert r.keeper.the_session is session and not session.closed
                assert not session.draining and not r.pair.server.draining
        # Every cut stream ends on both sides: only the live one remains.
        await until(lambda: session.streams == 1 and r.pair.server.streams == 1,
                     "cut streams cleaned up")
        await _echo_check(live_reader, live_writer, 99)
        live_writer.close()
        assert not session.closed and not r.pair.server.closed
        during = [rec.getMessage() for rec in caplog.records]
    assert not [rec for rec in caplog.records if rec.exc_info]
    assert not [line for line in during if "GOAWAY" in line or "dispatch failed" in line]
    # Each cut stream was logged in one line at most (never a traceback).
    assert len([line for line in during if "local connection" in line]) <= 2 * len(MOMENTS)
