"""Changing a cluster's agent key ends the sessions of the old key (issue 12
item 5), through the real relay, the management API and real agent Connectors."""

from __future__ import annotations

import asyncio
import logging

import pytest

from certs import fingerprint_sha256, generate_key_pair
from tests.support.relay import DEMO_OID, RelayEnv, roundtrip
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT
from tunnel import ErrorCode, StreamRefused, StreamReset, TunnelClosed

CLUSTER_PATH = "/api/v1/resourceGroups/rg1/clusters/alpha"
SCOPE = "/resourceGroups/rg1/clusters/alpha"



async def _connected_cluster(env: RelayEnv) -> tuple[object, int]:
    """rg1/alpha registered, its agent (old key) connected to an echo server;
    demo holds cluster-user. Returns the agent's relay-side session and the echo port."""
    echo = await start_echo_server()
    port = server_port(echo)
    keys = await env.register("rg1", "alpha")
    await env.grant(DEMO_OID, "cluster-user", SCOPE)
    await env.start_agent("rg1/alpha", keys, ("127.0.0.1", port))
    return await env.wait_agent("rg1/alpha"), port


async def test_relay_key_change_ends_old_key_session(
    relay_env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """After an admin PUTs a new agent certificate: the old-key session and its
    open stream end, new streams are refused until an agent with the new key
    connects, then they are routed to it; one log line names principal, cluster
    and both fingerprints."""
    caplog.set_level(logging.INFO, logger="relay")
    old_session, port = await _connected_cluster(relay_env)
    old_cert = (await relay_env.state.registry.get("rg1/alpha")).agent_public_key_certificate
    client = await relay_env.client(relay_env.token("demo"))
    open_stream = await client.open_stream(b"rg1/alpha", timeout=WAIT)
    await open_stream.write(b"x")
    assert await open_stream.read() == b"x"

    new_keys = generate_key_pair("rg1/alpha")
    status, body = await relay_env.api("PUT", CLUSTER_PATH, relay_env.token("admin"),
                                       {"agentPublicKeyCertificate": new_keys.certificate_pem.decode()})
    assert status == 200, body
    async with asyncio.timeout(WAIT):
        await old_session.wait_closed()  # type: ignore[attr-defined]
    with pytest.raises((StreamReset, TunnelClosed)):
        async with asyncio.timeout(WAIT):
            while await open_stream.read():
                pass
    assert (await relay_env.state.registry.get("rg1/alpha")).connectivity_status == "Offline"
    # The old agent keeps redialing with its old key and is refused; no agent, no route.
    with pytest.raises(StreamRefused) as refused:
        await client.open_stream(b"rg1/alpha", timeout=WAIT)
    assert refused.value.code == ErrorCode.TARGET_UNAVAILABLE
    assert relay_env.state.directory.get("rg1/alpha") is None

    await relay_env.start_agent("rg1/alpha", new_keys, ("127.0.0.1", port))
    await relay_env.wait_agent("rg1/alpha")
    assert await roundtrip(client, b"rg1/alpha", b"new key") == b"new key"

    old_fp, new_fp = fingerprint_sha256(old_cert.encode()), fingerprint_sha256(new_keys.certificate_pem)
    lines = [r.getMessage() for r in caplog.records if "agent key changed id=" in r.getMessage()]
    assert len(lines) == 1
    assert "rg1/alpha" in lines[0] and "admin@contoso.example" in lines[0]
    assert f"old={old_fp}" in lines[0] and f"new={new_fp}" in lines[0]


async def test_relay_same_key_put_keeps_session(relay_env: RelayEnv) -> None:
    """A PUT that keeps the key (e.g. a new location) leaves the session alone."""
    session, _ = await _connected_cluster(relay_env)
    cert = (await relay_env.state.registry.get("rg1/alpha")).agent_public_key_certificate
    status, _ = await relay_env.api("PUT", CLUSTER_PATH, relay_env.token("admin"),
                                    {"agentPublicKeyCertificate": cert, "location": "eu"})
    assert status == 200
    assert relay_env.state.directory.get("rg1/alpha") is session and not session.closed  # type: ignore[attr-defined]


async def test_relay_cluster_user_cannot_change_key(relay_env: RelayEnv) -> None:
    """A principal with only cluster-user on the cluster gets 403 and changes nothing."""
    session, _ = await _connected_cluster(relay_env)
    before = (await relay_env.state.registry.get("rg1/alpha")).agent_public_key_certificate
    stranger = generate_key_pair("rg1/alpha")
    for body in ({"agentPublicKeyCertificate": stranger.certificate_pem.decode()},
                 {"agentPublicKeyCertificate": before,
                  "servingCaCertificate": stranger.certificate_pem.decode()}):
        status, _ = await relay_env.api("PUT", CLUSTER_PATH, relay_env.token("demo"), body)
        assert status == 403
    cluster = await relay_env.state.registry.get("rg1/alpha")
    assert cluster.agent_public_key_certificate == before and cluster.serving_ca_certificate == ""
    assert relay_env.state.directory.get("rg1/alpha") is session


async def test_relay_onboarding_may_change_key(relay_env: RelayEnv) -> None:
    """The role that may create the cluster (onboarding at its resource group)
    may change its key, and that change ends the old session too."""
    session, _ = await _connected_cluster(relay_env)
    await relay_env.grant(DEMO_OID, "onboarding", "/resourceGroups/rg1")
    new_keys = generate_key_pair("rg1/alpha")
    status, _ = await relay_env.api("PUT", CLUSTER_PATH, relay_env.token("demo"),
                                    {"agentPublicKeyCertificate": new_keys.certificate_pem.decode()})
    assert status == 200
    async with asyncio.timeout(WAIT):
        await session.wait_closed()  # type: ignore[attr-defined]
