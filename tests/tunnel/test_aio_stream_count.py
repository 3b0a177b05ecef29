"""Finished streams stop counting against the peer's max_concurrent_streams
at once, even when the application never read their last bytes."""

from __future__ import annotations

import asyncio

import pytest

from tests.tunnel.test_aio import WAIT, read_all, tunnel_pair
from tunnel import TunnelConfig, TunnelStream
from tunnel.aio_config import adapter_limits

pytestmark = pytest.mark.timeout(60)


async def test_finished_streams_with_unread_bytes_free_their_slot() -> None:
    """The server allows 2 streams; its handler answers and sees the client's
    FIN without reading the request. Ten sequential streams all open: each is
    forgotten when both FINs are seen, not when its bytes are read."""
    config = TunnelConfig(limits=adapter_limits(max_concurrent_streams=2))

    async def answers_without_reading(stream: TunnelStream) -> None:
        stream.accept()
        await stream.write(b"response")
        await stream.write_eof()
        while not stream.done:  # the client's FIN arrives; its request stays unread
            await asyncio.sleep(0.005)
        assert stream.buffered > 0

    async with tunnel_pair(answers_without_reading, config=config) as pair:
        async with asyncio.timeout(WAIT):
            for _ in range(10):
                stream = await pair.client.open_stream(b"x")
                await stream.write(b"request" * 100)
                await stream.write_eof()
                assert await read_all(stream) == b"response"
            while pair.server._core.open_stream_count:  # the last FIN may be in flight
                await asyncio.sleep(0.005)
