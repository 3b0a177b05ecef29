"""While the relay is lost, a local connection is answered at once with a TLS
alert (kubectl stops instead of retrying an EOF), and a client that sends
nothing is closed after the bounded first-bytes wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from client.connect_head import REQUEST_HEAD_WAIT
from client.errors import RelayUnreachable
from client.listener import TLS_ALERT_INTERNAL_ERROR, LocalListener


class LostRelayKeeper:
    """Stands in for RelaySessionKeeper after it lost the relay."""

    relay_lost_reason = "cannot reach the relay at https://relay.test: connection refused"

    def __init__(self) -> None:
        self.asked = 0

    async def session(self, timeout: float = 10.0) -> Any:
        self.asked += 1
        raise RelayUnreachable(self.relay_lost_reason)


async def _listener() -> tuple[LocalListener, LostRelayKeeper]:
    keeper = LostRelayKeeper()
    listener = LocalListener(keeper, b"rg/c", port=0)  # type: ignore[arg-type]
    await listener.bind()
    await listener.serve()
    return listener, keeper


async def test_listener_answers_a_tls_client_with_an_alert_while_the_relay_is_lost(
        caplog: pytest.LogCaptureFixture) -> None:
    """A ClientHello gets the fatal internal_error alert record, then EOF; no
    warning line per connection (arc-proxy said "lost the relay" once)."""
    listener, keeper = await _listener()
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"\x16\x03\x01\x00\x05hello")  # a handshake record's first bytes
            await writer.drain()
            assert await reader.read() == TLS_ALERT_INTERNAL_ERROR  # then EOF
            writer.close()
    finally:
        await listener.close()
    assert keeper.asked == 3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def test_listener_closes_a_silent_client_after_the_hello_wait() -> None:
    """A client that sends nothing is closed (no alert) once REQUEST_HEAD_WAIT passes."""
    listener, _ = await _listener()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        async with asyncio.timeout(REQUEST_HEAD_WAIT + 10):
            assert await reader.read() == b""
        writer.close()
    finally:
        await listener.close()
