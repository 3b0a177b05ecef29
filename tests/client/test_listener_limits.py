"""arc-proxy's listener bounds connections still waiting for their stream to
open; excess ones are closed at once with one log line, and the bound frees up
as opens complete. Real sockets on 127.0.0.1 (see test_listener_resets.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from client.listener import MAX_PENDING_OPENS, LocalListener
from tests.client.test_listener_resets import _echo_check, rig
from tests.support.waits import until
from tests.tunnel.test_aio import WAIT

pytestmark = pytest.mark.timeout(60)


async def test_listener_closes_connections_beyond_the_pending_open_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4 allowed: while 4 wait for OPEN_OK a 5th is closed on accept (one
    warning); once the far side answers the 4 work, and so does a new one."""
    caplog.set_level(logging.INFO, logger="client")
    async with rig(max_pending_opens=4) as r:
        r.admit.clear()
        waiting = [await r.connect() for _ in range(4)]
        await until(lambda: len(r.opens) == 4, "4 OPENs pending at the far side")
        extra_reader, extra_writer = await r.connect()
        async with asyncio.timeout(WAIT):
            assert await extra_reader.read() == b""  # closed by the listener
        extra_writer.close()
        assert r.listener.refused == 1
        assert len(r.opens) == 4  # the refused one never opened a stream
        refusals = [rec for rec in caplog.records if "already wait" in rec.getMessage()]
        assert len(refusals) == 1 and refusals[0].exc_info is None
        r.admit.set()
        async with asyncio.timeout(WAIT):
            for n, (reader, writer) in enumerate(waiting):
                writer.write(b"e")
                await _echo_check(reader, writer, n)
                writer.close()
            reader, writer = await r.connect()
            writer.write(b"e")
            await _echo_check(reader, writer, 9)
            writer.close()
        assert r.listener.refused == 1


def test_listener_pending_open_bound_has_a_sane_default_and_is_checked() -> None:
    """The default admits a busy kubectl session; 0 is refused."""
    assert 16 <= MAX_PENDING_OPENS <= 1024
    with pytest.raises(ValueError):
        LocalListener(None, b"rg/x", max_pending_opens=0)  # type: ignore[arg-type]
