"""Forwarding between relay replicas (relay/peering.py): an agent on relay A,
a client on relay B, a real redis-server for presence, peer links with
mutual TLS, everything on loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.presence import Route
from tests.support.relay import DEMO_OID, RelayEnv, roundtrip
from tests.support.replicas import Replicas, running_replicas
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import until_async

pytestmark = pytest.mark.e2e

CLUSTER = "rg1/alpha"


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    async with running_replicas(tmp_path) as pair:
        yield pair


async def routes_on(env: RelayEnv, cid: str, replica: str) -> list[Route]:
    """The presence routes of ``cid`` that ``env`` sees on ``replica`` (empty: none yet)."""
    return [r for r in await env.state.presence.lookup(cid) if r.replica_id == replica]


async def agent_on_a(pair: Replicas) -> None:
    """Register the cluster, grant demo, start its agent on relay A and wait
    until relay B sees its route in presence."""
    echo = await start_echo_server()
    keys = await pair.a.register("rg1", "alpha")
    await pair.a.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await pair.a.start_agent(CLUSTER, keys, ("127.0.0.1", server_port(echo)))
    await pair.a.wait_agent(CLUSTER)
    await until_async(lambda: routes_on(pair.b, CLUSTER, "relay-a"), "relay A's route seen by relay B")


async def test_stream_on_b_reaches_agent_on_a_byte_exact(replicas: Replicas) -> None:
    """A client of relay B opens the cluster whose agent is on relay A: the
    stream crosses one peer link, bytes come back exact, the link is reused
    by the next stream and counted on both replicas."""
    await agent_on_a(replicas)
    assert replicas.b.state.directory.get(CLUSTER) is None
    client = await replicas.b.client(replicas.b.token("demo"))
    payload = os.urandom(3 * 1024 * 1024 + 17)
    back = await roundtrip(client, CLUSTER.encode(), payload)
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    assert await roundtrip(client, CLUSTER.encode(), b"second") == b"second"
    b_metrics, a_metrics = replicas.b.state.metrics, replicas.a.state.metrics
    assert b_metrics.sample("arc_relay_streams_forwarded_total",
                            {"direction": "out", "outcome": "forwarded"}) == 2
    assert a_metrics.sample("arc_relay_streams_forwarded_total",
                            {"direction": "in", "outcome": "forwarded"}) == 2
    assert b_metrics.sample("arc_relay_peer_link_events_total", {"direction": "out", "event": "up"}) == 1
    assert b_metrics.sample("arc_relay_peer_links_open", {"direction": "out"}) == 1
    assert a_metrics.sample("arc_relay_peer_links_open", {"direction": "in"}) == 1
