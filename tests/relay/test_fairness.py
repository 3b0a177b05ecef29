"""Stalled readers never slow the other streams, through a real relay.

Real relay, real agent ``Connector``, real TCP upstream, three users each with
their own client session (what arc-proxy holds). A *stalled* stream is a
client-side reader that never reads while the upstream keeps sending: its
bytes pile up as far as each hop's stream window allows, and nowhere else.
The other streams - on the same session, on another user's session, and on
the shared agent session - still move their bytes (bounded by a generous
timeout, never a throughput figure), and the relay's buffered bytes stay under
the written bound (``Limits.buffer_bound``, see tunnel/limits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest

from tests.support.relay import ADMIN_OID, BOB_OID, DEMO_OID, RelayEnv, roundtrip
from tests.support.servers import server_port, start_firehose_or_echo_server
from tests.support.waits import WAIT, until
from tunnel import TunnelSession, TunnelStream
from tunnel.aio import ADAPTER_STREAM_WINDOW
from tunnel.limits import INITIAL_STREAM_WINDOW

pytestmark = pytest.mark.timeout(120)

STALLED_PER_SESSION = 12  # 24 in all: six times what froze the cluster before
CHUNK = b"f" * 65536



async def _start_upstream() -> asyncio.Server:
    """b"F": send forever (until the connection goes); b"E": echo. Lower case
    too: through arc-proxy's listener a capital first byte means an HTTP request."""
    return await start_firehose_or_echo_server(CHUNK)


async def _stall(session: TunnelSession) -> TunnelStream:
    """Open a firehose stream and never read it."""
    stream = await session.open_stream(b"rg1/alpha", timeout=WAIT)
    await stream.write(b"F")
    return stream


async def test_relay_stalled_readers_in_two_users_sessions_do_not_slow_anyone(
    relay_env: RelayEnv,
) -> None:
    """12 stalled readers in demo's session and 12 in bob's: a stream on demo's
    own session, one on bob's and one on a third user's session each move
    4 MiB byte-exact through the relay and back, while the stalled streams
    stay stalled; the relay holds at most the windows it granted."""
    upstream = await _start_upstream()
    keys = await relay_env.register("rg1", "alpha")
    for oid in (DEMO_OID, BOB_OID, ADMIN_OID):
        await relay_env.grant(oid, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(upstream)))
    agent_leg = await relay_env.wait_agent("rg1/alpha")
    demo = await relay_env.client(relay_env.token("demo"))
    bob = await relay_env.client(relay_env.token("bob"))
    third = await relay_env.client(relay_env.token("admin"))
    try:
        stalled = [await _stall(s) for s in (demo, bob) for _ in range(STALLED_PER_SESSION)]
        # Every stalled stream filled its client window and stopped there.
        await until(lambda: all(s.buffered >= INITIAL_STREAM_WINDOW for s in stalled),
                     "stalled client windows full")
        # The relay's agent leg holds their next window: the stall reached it.
        await until(lambda: agent_leg.buffered >= len(stalled) * INITIAL_STREAM_WINDOW,
                     "the stall reached the relay")
        most = 0

        async def watch_relay() -> None:
            nonlocal most
            while True:
                most = max(most, agent_leg.buffered)
                assert agent_leg.buffered <= agent_leg.buffer_bound
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_relay())
        payload = b"E" + os.urandom(4 * 1024 * 1024)
        results = await asyncio.gather(
            *(roundtrip(s, b"rg1/alpha", payload) for s in (demo, bob, third))
        )
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        assert all(back == payload[1:] for back in results)
        # The stalled streams are still stalled, none reset, none grown.
        assert all(s.buffered <= INITIAL_STREAM_WINDOW for s in stalled)
        assert not any(s.done for s in stalled)
        # The written bound (tunnel/limits.py): initial windows plus the
        # growth budget; here far below it, and no stalled stream holds more
        # than the largest window the relay may grant.
        assert most <= agent_leg.config.limits.buffer_bound
        assert most <= len(stalled) * ADAPTER_STREAM_WINDOW + 3 * ADAPTER_STREAM_WINDOW
        assert not demo.closed and not bob.closed and not third.closed
        for s in stalled:
            s.reset()
    finally:
        upstream.close()


async def test_relay_many_stalled_readers_in_one_session_do_not_slow_its_other_streams(
    relay_env: RelayEnv,
) -> None:
    """40 stalled readers on one arc-proxy session: two more streams on the
    same session still move 2 MiB each, byte-exact."""
    upstream = await _start_upstream()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(upstream)))
    agent_leg = await relay_env.wait_agent("rg1/alpha")
    demo = await relay_env.client(relay_env.token("demo"))
    try:
        stalled = [await _stall(demo) for _ in range(40)]
        await until(lambda: all(s.buffered >= INITIAL_STREAM_WINDOW for s in stalled),
                     "stalled client windows full")
        payload = b"E" + os.urandom(2 * 1024 * 1024)
        results = await asyncio.gather(*(roundtrip(demo, b"rg1/alpha", payload) for _ in range(2)))
        assert all(back == payload[1:] for back in results)
        assert not any(s.done for s in stalled)
        assert agent_leg.buffered <= agent_leg.buffer_bound <= agent_leg.config.limits.buffer_bound
        for s in stalled:
            s.reset()
    finally:
        upstream.close()


async def test_relay_stalled_kubectl_sockets_behind_arc_proxy_do_not_slow_a_live_one(
    relay_env: RelayEnv,
) -> None:
    """The whole path: 8 kubectl-side sockets on arc-proxy's listener that
    never read a byte (a ``logs -f | less`` each) while the upstream keeps
    sending; a ninth socket on the same listener still moves 4 MiB both ways,
    byte-exact, and the relay's agent leg stays within its bound."""
    from client.listener import LocalListener

    class Keeper:
        def __init__(self, session: TunnelSession) -> None:
            self.the_session = session

        async def session(self) -> TunnelSession:
            return self.the_session

    upstream = await _start_upstream()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(upstream)))
    agent_leg = await relay_env.wait_agent("rg1/alpha")
    session = await relay_env.client(relay_env.token("demo"))
    listener = LocalListener(Keeper(session), b"rg1/alpha", port=0)  # type: ignore[arg-type]
    await listener.bind()
    await listener.serve()
    stalled: list[asyncio.StreamWriter] = []
    try:
        for _ in range(8):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", listener.port))
            _, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"f")
            stalled.append(writer)
        # The stall reached the relay: each stalled stream's next window waits there.
        await until(lambda: agent_leg.buffered >= len(stalled) * INITIAL_STREAM_WINDOW,
                     "the stall reached the relay")
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        payload = os.urandom(4 * 1024 * 1024)

        async def send() -> None:
            writer.write(b"e")
            for i in range(0, len(payload), 65536):
                writer.write(payload[i:i + 65536])
                await writer.drain()

        async with asyncio.timeout(WAIT * 3):
            sender = asyncio.create_task(send())
            assert await reader.readexactly(len(payload)) == payload
            await sender
        writer.close()
        assert agent_leg.buffered <= agent_leg.buffer_bound <= agent_leg.config.limits.buffer_bound
        assert not session.closed and not session.draining
    finally:
        for w in stalled:
            w.transport.abort()
        await listener.close()
        upstream.close()
