"""Rolling restart of one relay without loss, behind a real HAProxy.

Two relays share one SQLite file, development CA and redis-server (presence:
a relay moves its agents only when it is one of several); HAProxy (``balance
first``: every new connection reaches relay A while A is ready, else B)
health-checks their ``/readyz``. Agent and arc-proxy (``RelaySessionKeeper``
behind a real ``LocalListener``) both reach relay A through HAProxy. Relay A
then stops as on SIGTERM (``RelayServer.stop``, what ``arc-relay`` runs on
the signal): its readiness fails at once, the agent moves to relay B
make-before-break, arc-proxy moves its new streams to a session on B, and a
stream open since before the stop finishes on A.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from agent.connector import Connector
from client.auth import TokenSource
from client.config import AuthConfig, ClientConfig
from client.listener import LocalListener
from client.relay_client import RelaySessionKeeper
from demo.haproxy import Backend, haproxy_binary, haproxy_child, haproxy_config, listening
from demo.processes import free_port
from relay import RelayServer
from relay.presence import PresenceConfig
from tests.support.redis import running_redis
from tests.support.relay import DEMO_OID, RelayEnv
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, until, until_async

pytestmark = pytest.mark.e2e

CLUSTER = "rg1/alpha"


@dataclass
class Tier:
    """Relays ``a`` (an env) and ``b`` behind HAProxy at ``url``; an agent and
    an arc-proxy listener reaching them through it."""

    a: RelayEnv
    b: RelayServer
    url: str
    agent: Connector
    keeper: RelaySessionKeeper
    listener_port: int


async def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as resp:
        return resp.status


@contextlib.asynccontextmanager
async def _tier(tmp_path: Path) -> AsyncIterator[Tier]:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (Debian package haproxy; .ci/run installs it)")
    lb_port = free_port()
    url = f"https://127.0.0.1:{lb_port}"
    redis_runner = running_redis(tmp_path / "redis")
    redis = await anext(redis_runner)

    def presence(name: str) -> PresenceConfig:
        return PresenceConfig(redis_url=redis.url, replica_id=name)

    a = await RelayEnv.start(tmp_path, public_url=url, drain_seconds=WAIT, agent_move_seconds=WAIT,
                             presence=presence("relay-a"))
    b = RelayServer(dataclasses.replace(a.relay.config, port=0, presence=presence("relay-b")))
    await b.start()
    backends = [Backend(name, relay.port, await _port_of(relay.health_url))
                for name, relay in (("a", a.relay), ("b", b))]
    config_file = tmp_path / "haproxy.cfg"
    config_file.write_text(haproxy_config(lb_port, backends, balance="first"))
    haproxy = haproxy_child(binary, config_file, tmp_path).start()

    def haproxy_listening() -> bool:
        haproxy.check_alive()
        return listening(lb_port)
    echo = await start_echo_server()
    listener: LocalListener | None = None
    keeper: RelaySessionKeeper | None = None
    try:
        await until(haproxy_listening, "haproxy to listen")
        keys = await a.register("rg1", "alpha")
        await a.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
        agent = await a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(echo)), relay_url=url)
        await a.wait_agent(CLUSTER)  # balance first: relay A
        idp = a.idp
        auth = AuthConfig(token_endpoint=idp.token_endpoint, ca_file=str(idp.ca_file),
                          client_id=idp.cli_client_id, username="demo@contoso.example",
                          password="demo-password")
        assert a.relay.ca_file is not None
        config = ClientConfig(relay_url=url, relay_ca_file=str(a.relay.ca_file), auth=auth)
        keeper = RelaySessionKeeper(config, TokenSource(auth), name="drain-test")
        await keeper.start()
        listener = LocalListener(keeper, CLUSTER.encode(), port=0)
        listener_port = await listener.bind()
        await listener.serve()
        yield Tier(a, b, url, agent, keeper, listener_port)
    finally:
        if listener is not None:
            await listener.close()
        if keeper is not None:
            await keeper.close()
        await a.close()
        await b.stop(drain_seconds=0.5)
        haproxy.stop()
        echo.close()
        await redis_runner.aclose()


async def _echo_once(port: int, payload: bytes) -> bytes:
    """One short request through arc-proxy's listener: connect, send, read it back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def test_relay_stop_moves_agent_before_break_and_loses_no_request(tmp_path: Path) -> None:
    """SIGTERM's stop on the relay holding the agent: /readyz 503 at once; the
    agent's new session comes up on relay B and the agent itself ends the old
    session's intake (GOAWAY from the agent, not the relay's bound); short
    requests sent all through the stop succeed; a stream open since before the
    stop keeps working and ends cleanly; the stop returns once it closed."""
    async with _tier(tmp_path) as tier:
        a = tier.a
        old_session = await a.wait_agent(CLUSTER)
        reader, writer = await asyncio.open_connection("127.0.0.1", tier.listener_port)
        writer.write(b"long-lived ")
        assert await asyncio.wait_for(reader.readexactly(11), WAIT) == b"long-lived "
        assert await _echo_once(tier.listener_port, b"warm-up") == b"warm-up"

        failures: list[BaseException] = []
        done = asyncio.Event()
        sent = 0

        async def short_requests() -> None:
            nonlocal sent
            while not done.is_set():
                payload = f"req-{sent}".encode()
                try:
                    assert await _echo_once(tier.listener_port, payload) == payload
                except (OSError, AssertionError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    failures.append(exc)
                sent += 1

        load = asyncio.ensure_future(short_requests())
        stop = asyncio.ensure_future(a.relay.stop())
        # Readiness fails first, while the stop is still moving and draining.
        assert await _status(a.http, a.relay.health_url + "/readyz") == 503
        b_state = tier.b.state
        assert b_state is not None
        new_session = await b_state.directory.wait_for(CLUSTER, WAIT)
        assert new_session is not None, "the agent never reached relay B"
        await until(lambda: old_session.goaway_received, "the agent to GOAWAY its old session")
        assert tier.agent.moves == 1  # moved make-before-break, not redialled after a relay GOAWAY
        # arc-proxy's new streams now reach relay B.
        await until(lambda: b_state.client_sessions, "arc-proxy to open a session on relay B")
        before = sent
        await until(lambda: sent >= before + 5, "short requests through relay B")
        assert not stop.done()  # the long-lived stream still holds relay A's drain
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), WAIT) == b"still here"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
        async with asyncio.timeout(WAIT):
            await stop
        done.set()
        await load
        assert failures == [], f"{len(failures)} of {sent} short requests failed: {failures[:3]!r}"
        assert sent > 5
        await until_async(lambda: _up_through(tier.listener_port), "a request after the stop")


async def _up_through(port: int) -> bool:
    return await _echo_once(port, b"after") == b"after"


async def test_relay_stop_gives_an_agent_that_cannot_move_goaway_at_the_bound(tmp_path: Path) -> None:
    """An agent that reaches only this relay (no load balancer): asked to
    move, it dials and fails while its session stays open for new streams;
    once ``limits.agent_move_seconds`` passes the relay sends GOAWAY itself
    (the agent never did: ``moves`` stays 0) and the stop completes."""
    redis_runner = running_redis(tmp_path / "redis")
    redis = await anext(redis_runner)
    try:
        presence = PresenceConfig(redis_url=redis.url, replica_id="relay-a")
        a = await RelayEnv.start(tmp_path, presence=presence, agent_move_seconds=1.0, drain_seconds=WAIT)
        echo = await start_echo_server()
        try:
            keys = await a.register("rg1", "alpha")
            agent = await a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(echo)))
            old = await a.wait_agent(CLUSTER)
            failures = agent.dial_failures
            stop = asyncio.ensure_future(a.relay.stop())
            await until(lambda: agent.dial_failures > failures, "the agent to try a new session")
            assert not old.draining and not stop.done()  # the old session still takes streams
            await until(lambda: old.closed, "the relay's GOAWAY at the bound and the session's end")
            # (Not the whole stop: RedisPresence.close sometimes waits for its
            # writer task's cancellation for ~20 s, a presence matter.)
            async with asyncio.timeout(WAIT * 2):
                await stop
            assert old.closed and not old.goaway_received  # the relay's GOAWAY, at the bound
            assert agent.moves == 0
        finally:
            await a.close()
            echo.close()
    finally:
        await redis_runner.aclose()
