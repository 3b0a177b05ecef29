"""What an idle routed stream costs the relay (issue 11: <= 4 KiB per stream).

Measured by ``python -m bench.relay_memory``; these tests pin the two
structural reasons it stays small, through a real relay: once a stream is
routed the router's handler has returned (no task, no coroutine frames per
idle stream), and the accounting it took (open-streams gauge, stream shares,
live streams for revocation) is given back exactly once when the pair ends,
however it ends.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from relay.metrics import RelayMetrics
from relay.router import meter, principal_key
from tests.support.relay import DEMO_OID, RelayEnv
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, until
from tunnel import ErrorCode, StreamReset, TunnelSession, TunnelStream

STREAMS = 24



def streams_open(env: RelayEnv) -> float:
    """The relay's ``arc_relay_streams_open`` gauge."""
    value = env.state.metrics.registry.get_sample_value("arc_relay_streams_open")
    return float(value or 0.0)


def relay_stream_handlers() -> int:
    """Stream handler tasks of the relay's client sessions (named ``client:...``)
    still running in this loop."""
    count = 0
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if getattr(coro, "__qualname__", "") != "TunnelSession._run_handler" or frame is None:
            continue
        session = frame.f_locals.get("self")
        if isinstance(session, TunnelSession) and session.name.startswith("client:"):
            count += 1
    return count


async def routed_env(env: RelayEnv) -> TunnelSession:
    """Cluster rg1/alpha with an agent in front of an echo server, the demo
    user granted, and a client session."""
    echo = await start_echo_server()
    keys = await env.register("rg1", "alpha")
    await env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await env.wait_agent("rg1/alpha")
    return await env.client(env.token("demo"))


async def open_idle(client: TunnelSession, count: int) -> list[TunnelStream]:
    """``count`` routed streams, each proven live end to end, then left idle."""
    streams = []
    for _ in range(count):
        stream = await client.open_stream(b"rg1/alpha", timeout=WAIT)
        await stream.write(b"x")
        async with asyncio.timeout(WAIT):
            assert await stream.read(1) == b"x"
        streams.append(stream)
    return streams


def accounting_released(env: RelayEnv, holder: str) -> bool:
    """Nothing of the routed streams is left in the relay's books."""
    state = env.state
    return (streams_open(env) == 0 and len(state.live_streams) == 0
            and state.shares.held(holder, "rg1/alpha") == 0)


async def test_relay_router_holds_no_task_per_idle_routed_stream(relay_env: RelayEnv) -> None:
    """24 idle routed streams: the gauge counts 24, the relay's client
    session runs no stream handler task for any of them, and bytes still go
    both ways on every one of them afterwards."""
    client = await routed_env(relay_env)
    streams = await open_idle(client, STREAMS)
    assert streams_open(relay_env) == STREAMS
    assert len(relay_env.state.live_streams) == STREAMS
    await until(lambda: relay_stream_handlers() == 0, "router handlers returned")
    for i, stream in enumerate(streams):
        payload = f"stream {i}".encode()
        await stream.write(payload)
        async with asyncio.timeout(WAIT):
            assert await stream.readexactly(len(payload)) == payload


async def test_relay_releases_routed_stream_accounting_on_fin_and_reset(relay_env: RelayEnv) -> None:
    """Half the idle streams end with FIN both ways, the other half with a
    client RESET: the open-streams gauge, the live-stream registry and the
    user's stream share all return to zero, and a new stream routes."""
    client = await routed_env(relay_env)
    streams = await open_idle(client, STREAMS)
    holder = next(iter(relay_env.state.live_streams)).principal
    key = principal_key(holder)
    assert relay_env.state.shares.held(key, "rg1/alpha") == STREAMS
    for stream in streams[: STREAMS // 2]:
        await stream.write_eof()
        async with asyncio.timeout(WAIT):
            assert await stream.read() == b""  # the echo server closed its side too
        await stream.aclose()
    for stream in streams[STREAMS // 2 :]:
        stream.reset(ErrorCode.CANCEL, "test")
    await until(lambda: accounting_released(relay_env, key), "routing accounting released")
    again = await open_idle(client, 1)
    assert streams_open(relay_env) == 1
    await again[0].aclose()
    await until(lambda: accounting_released(relay_env, key), "released again")


async def test_relay_releases_routed_stream_accounting_when_agent_session_dies(
    relay_env: RelayEnv,
) -> None:
    """The agent's session ends under idle routed streams: every client stream
    is reset (the join passes the session's death on) and the relay's books
    return to zero, with no handler task left to do it."""
    client = await routed_env(relay_env)
    streams = await open_idle(client, 4)
    key = principal_key(next(iter(relay_env.state.live_streams)).principal)
    agent_session = await relay_env.wait_agent("rg1/alpha")
    await agent_session.close()
    for stream in streams:
        with pytest.raises(StreamReset) as info:
            async with asyncio.timeout(WAIT):
                await stream.read()
        assert info.value.code == ErrorCode.CANCEL
    await until(lambda: accounting_released(relay_env, key), "routing accounting released")


def test_router_byte_meters_are_shared_and_go_with_their_metrics() -> None:
    """Every routed stream of a relay gets the same meter per direction (no
    closure per stream); it counts into that relay's counter; the cache
    keeps no relay's metrics alive once the relay dropped them."""
    metrics = RelayMetrics()
    shared = meter(metrics.bytes, "client_to_agent", None)
    assert meter(metrics.bytes, "client_to_agent", None) is shared
    assert meter(metrics.bytes, "agent_to_client", None) is not shared
    shared(b"abc")
    shared(memoryview(b"de"))
    assert metrics.registry.get_sample_value(
        "arc_relay_bytes_total", {"direction": "client_to_agent"}) == 5
    gone = [weakref.ref(metrics.bytes), weakref.ref(metrics.bytes.labels("client_to_agent"))]
    del metrics, shared
    gc.collect()
    assert [ref() for ref in gone] == [None, None]
