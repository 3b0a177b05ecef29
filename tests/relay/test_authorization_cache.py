"""Cheap refusals: cached authorization decisions and rate-limited refusal logs.

A flood of forbidden OPENs costs one database query and one log line per
principal/cluster/reason and interval; a role change through the management
API takes effect on the next OPEN (the cache is cleared), not after the TTL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.log_limit import RefusalLog
from relay.roles import AuthorizationCache
from tests.support.relay import DEMO_OID, RelayEnv, roundtrip, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT
from tunnel import ErrorCode, StreamRefused, TunnelSession

ASSIGNMENT = "/api/v1/roleAssignments/demo-alpha"


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A relay whose decisions would stay cached for an hour and whose
    refusal lines repeat at most once an hour: only invalidation can help."""
    async with running_env(tmp_path, authorization_cache_seconds=3600.0,
                           refusal_log_interval_seconds=3600.0) as env:
        yield env


async def _forbidden(session: TunnelSession, target: bytes) -> bool:
    try:
        stream = await session.open_stream(target, timeout=WAIT)
    except StreamRefused as exc:
        assert exc.code == ErrorCode.FORBIDDEN
        return True
    await stream.aclose()
    return False


async def test_relay_caches_forbidden_decisions_and_logs_one_line(
        relay_env: RelayEnv, caplog: pytest.LogCaptureFixture) -> None:
    """50 forbidden OPENs: one database lookup, 49 cache hits, one log line."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("demo"))
    cache = relay_env.state.roles.cache
    caplog.set_level(logging.INFO, logger="relay")
    hits, misses = cache.hits, cache.misses
    for _ in range(50):
        assert await _forbidden(client, b"rg1/alpha")
    assert (cache.misses - misses, cache.hits - hits) == (1, 49)
    lines = [r.getMessage() for r in caplog.records if "stream forbidden" in r.getMessage()]
    assert len(lines) == 1 and "cluster='rg1/alpha'" in lines[0] and "suppressed=0" in lines[0]
    echo.close()


async def test_relay_role_change_through_api_takes_effect_on_next_open(relay_env: RelayEnv) -> None:
    """Forbidden (and cached); an admin grants cluster-user through the API:
    the next OPEN is routed; the admin deletes it: the next OPEN is refused."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    client = await relay_env.client(relay_env.token("demo"))
    assert await _forbidden(client, b"rg1/alpha")
    assert await _forbidden(client, b"rg1/alpha")  # now from the cache
    admin = relay_env.token("admin")
    status, body = await relay_env.api("PUT", ASSIGNMENT, admin, {
        "principalId": DEMO_OID, "principalType": "User", "role": "cluster-user",
        "scope": "/resourceGroups/rg1/clusters/alpha"})
    assert status in (200, 201), body
    assert await roundtrip(client, b"rg1/alpha", b"hello") == b"hello"
    status, _ = await relay_env.api("DELETE", ASSIGNMENT, admin)
    assert status in (200, 204)
    assert await _forbidden(client, b"rg1/alpha")
    echo.close()


def test_authorization_cache_is_bounded_and_expires() -> None:
    """At most ``entries`` decisions (least recently used leave first), each
    for ``ttl`` seconds; a zero TTL caches nothing."""
    now = [0.0]
    cache = AuthorizationCache(ttl=5.0, entries=3, clock=lambda: now[0])
    keys = [(frozenset({f"user{i}"}), "connect", "/") for i in range(5)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, i % 2 == 0)
    assert cache.get(keys[0]) is True  # keys[0] is now the most recently used
    cache.put(keys[3], False)
    cache.put(keys[4], True)
    assert len(cache) == 3
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
    assert cache.get(keys[0]) is True and cache.get(keys[4]) is True
    now[0] += 5.0
    assert cache.get(keys[0]) is None and len(cache) == 2
    off = AuthorizationCache(ttl=0.0)
    off.put(keys[0], True)
    assert len(off) == 0


def test_refusal_log_writes_one_line_per_key_and_interval_with_suppressed_count(
        caplog: pytest.LogCaptureFixture) -> None:
    """Repeats within the interval are counted, not written; the next line
    after the interval carries the count; keys are bounded; values are repr'd."""
    now = [0.0]
    logger = logging.getLogger("relay.test-refusals")
    refusals = RefusalLog(logger, interval=10.0, max_keys=2, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="relay.test-refusals")
    assert refusals.refused("stream forbidden", "alice", "rg/a", "no role")
    assert not any(refusals.refused("stream forbidden", "alice", "rg/a", "no role") for _ in range(99))
    assert refusals.refused("stream forbidden", "bob\nforged line", "rg/a", "no role")
    now[0] += 10.0
    assert refusals.refused("stream forbidden", "alice", "rg/a", "no role")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].endswith("suppressed=0") and lines[2].endswith("suppressed=99")
    assert "\n" not in lines[1] and "'bob\\nforged line'" in lines[1]
    for i in range(10):
        refusals.refused("stream forbidden", f"user{i}", "rg/a", "no role")
    assert len(refusals) == 2
