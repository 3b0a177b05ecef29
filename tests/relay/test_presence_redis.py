"""Presence in a real redis-server: routes, expiry, fencing, re-assert after a
restart, and one log line per loss and recovery of the store."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from relay.presence import Presence, PresenceConfig, PresenceUnavailable, Route
from relay.presence_redis import RedisPresence, presence_key
from tests.support.redis import RedisServer, running_redis
from tests.support.relay import DEMO_OID, roundtrip, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, until, until_async

CLUSTER = "rg1/alpha"


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server on a unix socket under tmp_path (skips when not installed)."""
    async for server in running_redis(tmp_path / "redis"):
        yield server


@pytest.fixture
async def presences() -> AsyncIterator[list[RedisPresence]]:
    """Presences a test made; closed at the end."""
    made: list[RedisPresence] = []
    yield made
    for presence in made:
        await presence.close()


def make(made: list[RedisPresence], server: RedisServer, replica: str, *, ttl: float = 15.0) -> RedisPresence:
    presence = RedisPresence(server.url, replica_id=replica, address=f"{replica}.relay:8443", ttl_seconds=ttl)
    made.append(presence)
    return presence


async def test_presence_registers_looks_up_and_unregisters_routes(
        redis_server: RedisServer, presences: list[RedisPresence]) -> None:
    """Each replica's route carries its id, address, session id and an expiry
    one TTL ahead; lookups list the newest session first; an unregistration
    removes only that replica's route, the last one the cluster's key."""
    a, b = make(presences, redis_server, "relay-a"), make(presences, redis_server, "relay-b")
    a.register(CLUSTER, 100)
    await a.flush()
    before = time.time()
    [route] = await b.lookup(CLUSTER)
    assert (route.replica_id, route.address, route.session_id) == ("relay-a", "relay-a.relay:8443", 100)
    assert before + 13 < route.expires_at < before + 16
    b.register(CLUSTER, 200)
    await b.flush()
    assert [(r.replica_id, r.session_id) for r in await a.lookup(CLUSTER)] == [("relay-b", 200), ("relay-a", 100)]
    a.unregister(CLUSTER, 100)
    await a.flush()
    assert [r.replica_id for r in await a.lookup(CLUSTER)] == ["relay-b"]
    b.unregister(CLUSTER, 200)
    await b.flush()
    assert await a.lookup(CLUSTER) == []
    client = redis_server.client()
    try:
        assert await client.exists(presence_key(CLUSTER)) == 0
    finally:
        await client.aclose()


async def test_presence_route_lapses_after_ttl_unless_refreshed(
        redis_server: RedisServer, presences: list[RedisPresence]) -> None:
    """A running presence keeps its route alive past several TTLs (refreshing
    every third of it); once it stops refreshing (its process died), Redis
    drops the key within the TTL."""
    ttl = 0.6
    a = make(presences, redis_server, "relay-a", ttl=ttl)
    await a.start()
    a.register(CLUSTER, 7)
    first: Route = (await until_async(lambda: a.lookup(CLUSTER), "the route written")).pop()

    async def refreshed_well_past_first_expiry() -> bool:
        routes = await a.lookup(CLUSTER)
        assert routes, "the route lapsed while its presence was refreshing it"
        return routes[0].expires_at > first.expires_at + 3 * ttl

    await until_async(refreshed_well_past_first_expiry, "three TTLs of refreshes")
    # Stop refreshing without unregistering (close leaves routes to lapse, as kill -9 does).
    await a.close()
    client = redis_server.client()
    try:
        await until_async(lambda: _absent(client, presence_key(CLUSTER)), "the key to expire", timeout=ttl * 4)
    finally:
        await client.aclose()


async def _absent(client: object, key: str) -> bool:
    return await client.exists(key) == 0  # type: ignore[attr-defined, no-any-return]


async def test_older_session_can_neither_remove_nor_overwrite_a_newer_registration(
        redis_server: RedisServer, presences: list[RedisPresence]) -> None:
    """Two processes under one replica id (a restarted relay and its zombie):
    the old one's unregister of its own older session leaves the newer route,
    and its (re-)registration of an older id is fenced and stops."""
    old, new = make(presences, redis_server, "relay-a"), make(presences, redis_server, "relay-a")
    old.register(CLUSTER, 100)
    await old.flush()
    new.register(CLUSTER, 200)
    await new.flush()
    old.unregister(CLUSTER, 100)
    await old.flush()
    assert [r.session_id for r in await new.lookup(CLUSTER)] == [200]
    old.register(CLUSTER, 150)
    await old.flush()
    assert [r.session_id for r in await new.lookup(CLUSTER)] == [200]
    assert old.fenced == 1 and CLUSTER not in old.held()


async def test_concurrent_registrations_under_one_replica_id_leave_the_newest(
        redis_server: RedisServer, presences: list[RedisPresence]) -> None:
    """Many processes racing to register, refresh and unregister sessions of
    one cluster under one replica id: whatever the interleaving, the newest
    session that was never unregistered is the one left."""
    racers = [make(presences, redis_server, "relay-a") for _ in range(12)]
    rng = random.Random(16)
    for round_ in range(10):
        ids = rng.sample(range(1000 * round_ + 1, 1000 * round_ + 1000), len(racers))
        newest = max(ids)
        for presence, session_id in zip(racers, ids, strict=True):
            presence.register(CLUSTER, session_id)

        async def churn(presence: RedisPresence, session_id: int, newest: int = newest) -> None:
            await presence.flush()
            if session_id != newest:  # every older one ends; so does its route, if it has one
                presence.unregister(CLUSTER, session_id)
                await presence.flush()

        await asyncio.gather(*(churn(p, i) for p, i in zip(racers, ids, strict=True)))
        assert [r.session_id for r in await racers[0].lookup(CLUSTER)] == [newest]
        for presence in racers:  # the next round starts above this one
            presence.unregister(CLUSTER, newest)
        await asyncio.gather(*(p.flush() for p in racers))


async def test_routes_are_reasserted_after_redis_restarts_with_one_line_each_way(
        redis_server: RedisServer, presences: list[RedisPresence], caplog: pytest.LogCaptureFixture) -> None:
    """kill -9 of redis-server: while it is down the relay's changes stay in
    memory and one line says the store is unreachable; once an empty
    redis-server is back on the same socket, every route this process holds is
    in Redis again within one refresh period, one line says so, and errors were
    counted."""
    caplog.set_level(logging.INFO, logger="relay")
    a = make(presences, redis_server, "relay-a", ttl=6.0)
    await a.start()
    for i in range(3):
        a.register(f"rg1/c{i}", 10 + i)
    await until_async(lambda: _all_routed(a, 3), "three routes written")

    redis_server.kill()
    a.register("rg1/c3", 13)  # a session arriving while Redis is down
    a.unregister("rg1/c0", 10)
    await until(lambda: a.errors >= 2, "the writer to fail and retry")
    assert a.reachable is False
    with pytest.raises(PresenceUnavailable):
        await a.lookup("rg1/c1")

    await asyncio.to_thread(redis_server.start)
    restarted = asyncio.get_running_loop().time()
    await until_async(lambda: _all_routed(a, 3, first=1), "routes re-asserted",
                      timeout=a.refresh_seconds + 1.0)
    took = asyncio.get_running_loop().time() - restarted
    assert await a.lookup("rg1/c0") == []
    lost = [r.message for r in caplog.records if "presence store unreachable" in r.message]
    back = [r.message for r in caplog.records if "presence store reachable again" in r.message]
    assert len(lost) == 1 and len(back) == 1, (lost, back)
    assert "routes=3" in back[0], back
    print(f"routes back {took:.2f} s after redis-server restarted (refresh period {a.refresh_seconds} s)")


async def test_routes_lost_by_a_quick_restart_are_reasserted_at_the_next_refresh(
        redis_server: RedisServer, presences: list[RedisPresence], caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarted between two refreshes (no write failed, so nothing
    noticed the outage): the next refresh finds the routes missing, writes
    them again and says so."""
    caplog.set_level(logging.INFO, logger="relay")
    a = make(presences, redis_server, "relay-a", ttl=3.0)
    a.register(CLUSTER, 5)
    await a.flush()
    redis_server.restart()  # the writer task is not running: no write can fail meanwhile
    assert await a.lookup(CLUSTER) == []
    await a.start()
    await until_async(lambda: a.lookup(CLUSTER), "the route re-asserted", timeout=WAIT)
    assert a.reasserted == 1
    assert any("presence routes re-asserted count=1" in r.message for r in caplog.records)


async def _all_routed(presence: RedisPresence, count: int, first: int = 0) -> bool:
    try:
        found = [await presence.lookup(f"rg1/c{i}") for i in range(first, first + count)]
    except PresenceUnavailable:
        return False
    return all(found)


async def test_relay_keeps_routing_its_agents_while_redis_is_down(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """A relay with Redis presence: redis-server killed -9 while an agent is
    connected -> kubectl-like streams to that agent still work, and a new
    agent still connects; one line on the loss, errors counted in
    /metrics' collector; Redis back -> both agents' routes are re-asserted."""
    caplog.set_level(logging.INFO, logger="relay")
    presence = PresenceConfig(redis_url=redis_server.url, ttl_seconds=1.5, replica_id="relay-a")
    async with running_env(tmp_path / "env", presence=presence) as env:
        echo = await start_echo_server()
        keys = await env.register("rg1", "alpha")
        await env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        await env.wait_agent("rg1/alpha")
        store = env.state.presence
        await until_async(lambda: store.lookup("rg1/alpha"), "the agent's route")

        redis_server.kill()
        await until(lambda: env.state.metrics.sample("arc_relay_presence_errors_total"), "a failed refresh")
        client = await env.client(env.token("demo"))
        assert await roundtrip(client, b"rg1/alpha", b"still served" * 1000) == b"still served" * 1000
        beta_keys = await env.register("rg1", "beta")
        await env.start_agent("rg1/beta", beta_keys, ("127.0.0.1", server_port(echo)))
        await env.wait_agent("rg1/beta")
        assert env.state.metrics.sample("arc_relay_presence_store_up") == 0

        await asyncio.to_thread(redis_server.start)
        for cid in ("rg1/alpha", "rg1/beta"):
            await until_async(partial(_lookup_quietly, store, cid), f"{cid}'s route re-asserted")
        assert env.state.metrics.sample("arc_relay_presence_store_up") == 1
        echo.close()
    lost = [r for r in caplog.records if "presence store unreachable" in r.message]
    back = [r for r in caplog.records if "presence store reachable again" in r.message]
    assert len(lost) == 1 and len(back) == 1, [r.message for r in lost + back]


async def _lookup_quietly(presence: Presence, cluster: str) -> list[Route]:
    try:
        return await presence.lookup(cluster)
    except PresenceUnavailable:
        return []
