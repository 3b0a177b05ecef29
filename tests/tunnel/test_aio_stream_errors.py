"""An exception in one stream's event hook (its socket, a bug) ends that
stream with a RESET code and one log line; the session and its other streams
go on (no GOAWAY, same session)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.tunnel.test_aio import WAIT, echo, read_all, tunnel_pair
from tunnel import ErrorCode, StreamReset, TunnelStream

pytestmark = pytest.mark.timeout(60)


class RaisingHook:
    """A StreamHook whose DATA handler fails like a dead socket (or a bug)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def on_data(self, stream: TunnelStream, data: bytes) -> None:
        raise self.exc

    def on_credit(self, stream: TunnelStream) -> None:
        raise self.exc

    def on_fin(self, stream: TunnelStream) -> None:
        """Nothing to do."""

    def on_reset(self, stream: TunnelStream) -> None:
        """Nothing to do."""

    def on_closed(self, stream: TunnelStream) -> None:
        """Nothing to do."""


@pytest.mark.parametrize(
    ("exc", "code", "level"),
    [
        (OSError(107, "Transport endpoint is not connected"), ErrorCode.CANCEL, logging.INFO),
        (RuntimeError("a bug"), ErrorCode.INTERNAL_ERROR, logging.ERROR),
    ],
)
async def test_failing_stream_hook_resets_only_its_stream(
    caplog: pytest.LogCaptureFixture, exc: Exception, code: ErrorCode, level: int
) -> None:
    """The server's hook for one stream raises on DATA: the client sees that
    stream reset with ``code``; another stream echoes byte-exact afterwards;
    no GOAWAY either way; exactly one log record names the stream (with a
    traceback only for a bug)."""
    caplog.set_level(logging.INFO, logger="tunnel")
    broken: list[TunnelStream] = []

    async def handler(stream: TunnelStream) -> None:
        if stream.target == b"broken":
            stream.accept()
            stream._bridge = RaisingHook(exc)  # what a splice would be
            broken.append(stream)
            await asyncio.Event().wait()
        else:
            await echo(stream)

    async with tunnel_pair(handler) as pair:
        server_session = None
        bad = await pair.client.open_stream(b"broken")
        await bad.write(b"boom")
        with pytest.raises(StreamReset) as info:
            async with asyncio.timeout(WAIT):
                await read_all(bad)
        assert info.value.code == code
        server_session = broken[0]._session
        good = await pair.client.open_stream(b"echo")
        await good.write(b"still here")
        await good.write_eof()
        async with asyncio.timeout(WAIT):
            assert await read_all(good) == b"still here"
        assert not pair.client.closed and not pair.client.draining
        assert not server_session.closed and not server_session.draining
        records = [r for r in caplog.records if f"stream {bad.id}:" in r.getMessage()]
        assert len(records) == 1 and records[0].levelno == level
        assert (records[0].exc_info is not None) == (level == logging.ERROR)
