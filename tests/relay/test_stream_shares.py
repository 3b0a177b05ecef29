"""Stream shares through a real relay: one user cannot take a cluster's streams.

User A opens up to its share and is refused beyond it (RESET TOO_MANY_STREAMS
with the config key in the reason); user B still opens its streams; closing
A's streams frees A's share. A client session's own share spans clusters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.listener import refusal_error
from relay.router import principal_key
from tests.support.relay import BOB_OID, DEMO_OID, RelayEnv, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT
from tunnel import ErrorCode, StreamRefused, TunnelSession, TunnelStream

PER_PRINCIPAL = 3
PER_SESSION = 5


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A relay with small stream shares."""
    async with running_env(tmp_path, streams_per_principal_per_cluster=PER_PRINCIPAL,
                           streams_per_client_session=PER_SESSION) as env:
        yield env


async def _cluster(env: RelayEnv, name: str) -> asyncio.Server:
    """Register ``rg1/<name>``, grant demo and bob, connect its agent to an echo server."""
    echo = await start_echo_server()
    keys = await env.register("rg1", name)
    for oid in (DEMO_OID, BOB_OID):
        await env.grant(oid, "cluster-user", f"/resourceGroups/rg1/clusters/{name}")
    await env.start_agent(f"rg1/{name}", keys, ("127.0.0.1", server_port(echo)))
    await env.wait_agent(f"rg1/{name}")
    return echo


async def _echoes(stream: TunnelStream) -> None:
    """The stream is live end to end: a byte goes to the echo server and back."""
    await stream.write(b"x")
    async with asyncio.timeout(WAIT):
        assert await stream.read(1) == b"x"


async def _refused(session: TunnelSession, target: bytes) -> StreamRefused:
    with pytest.raises(StreamRefused) as info:
        await session.open_stream(target, timeout=WAIT)
    return info.value


async def _close(stream: TunnelStream) -> None:
    """Half-close, read the echo's FIN, release the stream."""
    await stream.write_eof()
    async with asyncio.timeout(WAIT):
        while await stream.read():
            pass
    await stream.aclose()


async def _held(env: RelayEnv, oid: str, cluster: str, count: int) -> None:
    """Wait (bounded) until the relay counts ``count`` streams for ``oid`` on ``cluster``."""
    key = principal_key_of(env, oid)
    async with asyncio.timeout(WAIT):
        while env.state.shares.held(key, cluster) != count:
            await asyncio.sleep(0.01)


def principal_key_of(env: RelayEnv, oid: str) -> str:
    return f"{env.idp.issuer} {oid}"


async def test_relay_refuses_streams_beyond_principal_share_while_others_are_served(
        relay_env: RelayEnv) -> None:
    """A holds its share of rg1/alpha and is refused one more; B still opens
    its streams; closing one of A's streams lets A open one again."""
    echo = await _cluster(relay_env, "alpha")
    a = await relay_env.client(relay_env.token("demo"))
    a_streams = [await a.open_stream(b"rg1/alpha", timeout=WAIT) for _ in range(PER_PRINCIPAL)]
    for stream in a_streams:
        await _echoes(stream)
    refused = await _refused(a, b"rg1/alpha")
    assert refused.code == ErrorCode.TOO_MANY_STREAMS
    assert "limits.streams_per_principal_per_cluster=3" in refused.reason
    # A second session of the same user does not get a fresh share.
    a2 = await relay_env.client(relay_env.token("demo"))
    assert (await _refused(a2, b"rg1/alpha")).code == ErrorCode.TOO_MANY_STREAMS

    b = await relay_env.client(relay_env.token("bob"))
    b_streams = [await b.open_stream(b"rg1/alpha", timeout=WAIT) for _ in range(PER_PRINCIPAL)]
    for stream in b_streams:
        await _echoes(stream)

    await _close(a_streams.pop())
    await _held(relay_env, DEMO_OID, "rg1/alpha", PER_PRINCIPAL - 1)
    again = await a.open_stream(b"rg1/alpha", timeout=WAIT)
    await _echoes(again)
    await _held(relay_env, DEMO_OID, "rg1/alpha", PER_PRINCIPAL)
    for stream in [again, *a_streams, *b_streams]:
        await _close(stream)
    await _held(relay_env, DEMO_OID, "rg1/alpha", 0)
    await _held(relay_env, BOB_OID, "rg1/alpha", 0)
    metrics = relay_env.state.metrics.render().decode()
    assert 'arc_relay_streams_total{outcome="over_share"} 2.0' in metrics
    echo.close()


async def test_relay_refuses_streams_beyond_client_session_share(relay_env: RelayEnv) -> None:
    """One client session holds at most its own share across clusters."""
    echo_a = await _cluster(relay_env, "alpha")
    echo_b = await _cluster(relay_env, "beta")
    a = await relay_env.client(relay_env.token("demo"))
    held = [await a.open_stream(b"rg1/alpha", timeout=WAIT) for _ in range(PER_PRINCIPAL)]
    held += [await a.open_stream(b"rg1/beta", timeout=WAIT) for _ in range(PER_SESSION - PER_PRINCIPAL)]
    refused = await _refused(a, b"rg1/beta")
    assert refused.code == ErrorCode.TOO_MANY_STREAMS
    assert "limits.streams_per_client_session=5" in refused.reason
    # The principal still has room on beta: another session of the same user gets it.
    other = await relay_env.client(relay_env.token("demo"))
    await _echoes(await other.open_stream(b"rg1/beta", timeout=WAIT))
    for stream in held:
        await _close(stream)
    echo_a.close()
    echo_b.close()


def test_arc_proxy_shows_share_refusal_as_one_line() -> None:
    """arc-proxy turns the TOO_MANY_STREAMS refusal into one line with the relay's reason."""
    reason = ("you have 3 streams open to cluster rg1/alpha, your limit "
              "(limits.streams_per_principal_per_cluster=3); close some and retry")
    err = refusal_error(ErrorCode.TOO_MANY_STREAMS, reason, "rg1/alpha")
    text = str(err)
    assert "\n" not in text and reason in text and "rg1/alpha" in text


def test_principal_key_is_issuer_and_object_id() -> None:
    """Shares are held by issuer + immutable oid, never by a display name."""
    from identity import Principal

    p = Principal(oid="o1", upn="a@b", tid=None, groups=(), issuer="https://iss", expires_at=0.0,
                  claims={})
    assert principal_key(p) == "https://iss o1"
