"""Revocation reaches open streams (issue 12 item 6): through the real relay,
a live stream is reset with FORBIDDEN when its principal's role is deleted or
its token expires; other principals' streams go on."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.revocation import ACCESS_REVOKED, TOKEN_EXPIRED
from tests.support.relay import BOB_OID, DEMO_OID, RelayEnv, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT
from tunnel import ErrorCode, StreamRefused, StreamReset, TunnelSession, TunnelStream

SCOPE = "/resourceGroups/rg1/clusters/alpha"
RECHECK_SECONDS = 1.0


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A relay re-authorising open streams every second, an agent on an echo
    server, and cluster-user for demo and bob through the management API."""
    async with running_env(tmp_path, recheck_seconds=RECHECK_SECONDS) as env:
        echo = await start_echo_server()
        keys = await env.register("rg1", "alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        await env.wait_agent("rg1/alpha")
        for oid in (DEMO_OID, BOB_OID):
            status, body = await env.api("PUT", f"/api/v1/roleAssignments/{_aid(oid)}", env.token("admin"),
                                         {"principalId": oid, "role": "cluster-user", "scope": SCOPE})
            assert status == 201, body
        yield env
        echo.close()


def _aid(oid: str) -> str:
    return hashlib.sha256(oid.encode()).hexdigest()[:16]


async def _live_stream(env: RelayEnv, token: str) -> tuple[TunnelSession, TunnelStream]:
    client = await env.client(token)
    stream = await client.open_stream(b"rg1/alpha", timeout=WAIT)
    assert await _echo(stream, b"hello") == b"hello"
    return client, stream


async def _echo(stream: TunnelStream, data: bytes) -> bytes:
    await stream.write(data)
    got = b""
    async with asyncio.timeout(WAIT):
        while len(got) < len(data):
            chunk = await stream.read()
            assert chunk, "stream ended"
            got += chunk
    return got


async def _reset_of(stream: TunnelStream) -> StreamReset:
    """Wait (bounded) for ``stream`` to be reset; the reset it carried."""
    with pytest.raises(StreamReset) as reset:
        async with asyncio.timeout(WAIT):
            while await stream.read():
                pass
    return reset.value


async def test_relay_resets_stream_when_role_deleted(relay_env: RelayEnv) -> None:
    """Deleting demo's assignment through the API resets demo's live stream
    with FORBIDDEN "access revoked"; bob's stream on the same cluster goes on;
    demo's new streams are refused."""
    demo_client, demo_stream = await _live_stream(relay_env, relay_env.token("demo"))
    _, bob_stream = await _live_stream(relay_env, relay_env.token("bob"))
    status, _ = await relay_env.api("DELETE", f"/api/v1/roleAssignments/{_aid(DEMO_OID)}",
                                    relay_env.token("admin"))
    assert status == 204
    reset = await _reset_of(demo_stream)
    assert (reset.code, reset.reason) == (ErrorCode.FORBIDDEN, ACCESS_REVOKED)
    assert await _echo(bob_stream, b"still here") == b"still here"
    assert len(relay_env.state.live_streams) == 1
    with pytest.raises(StreamRefused) as refused:
        await demo_client.open_stream(b"rg1/alpha", timeout=WAIT)
    assert refused.value.code == ErrorCode.FORBIDDEN


async def test_relay_periodic_recheck_ends_stream_within_bound(
    relay_env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """A role removed behind the API's back (another replica, a database edit)
    is noticed by the next periodic pass, i.e. within recheck_seconds."""
    caplog.set_level(logging.INFO, logger="relay")
    _, demo_stream = await _live_stream(relay_env, relay_env.token("demo"))
    _, bob_stream = await _live_stream(relay_env, relay_env.token("bob"))
    live = relay_env.state.live_streams
    assert await relay_env.state.roles.delete(_aid(DEMO_OID))
    passes_before = live.passes
    reset = await _reset_of(demo_stream)
    assert (reset.code, reset.reason) == (ErrorCode.FORBIDDEN, ACCESS_REVOKED)
    # The first pass after the deletion ended it: the bound is one interval.
    ended = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream ended")]
    assert ended == [f"stream ended reason='access revoked' principal='demo@contoso.example' "
                     f"cluster=rg1/alpha check={passes_before + 1}"]
    assert live.recheck_seconds == RECHECK_SECONDS
    assert await _echo(bob_stream, b"untouched") == b"untouched"


async def test_relay_resets_stream_when_token_expires(relay_env: RelayEnv) -> None:
    """A stream opened with a token that expires is reset with FORBIDDEN
    "token expired" at expiry; bob's long-lived token's stream goes on."""
    _, short_stream = await _live_stream(relay_env, relay_env.token("demo", lifetime=3))
    _, bob_stream = await _live_stream(relay_env, relay_env.token("bob"))
    reset = await _reset_of(short_stream)
    assert (reset.code, reset.reason) == (ErrorCode.FORBIDDEN, TOKEN_EXPIRED)
    assert await _echo(bob_stream, b"untouched") == b"untouched"


async def test_relay_role_update_to_viewer_revokes(relay_env: RelayEnv) -> None:
    """Changing demo's assignment from cluster-user to viewer (a PUT over the
    same id) ends demo's stream at once."""
    _, demo_stream = await _live_stream(relay_env, relay_env.token("demo"))
    status, _ = await relay_env.api("PUT", f"/api/v1/roleAssignments/{_aid(DEMO_OID)}",
                                    relay_env.token("admin"),
                                    {"principalId": DEMO_OID, "role": "viewer", "scope": SCOPE})
    assert status == 200
    reset = await _reset_of(demo_stream)
    assert (reset.code, reset.reason) == (ErrorCode.FORBIDDEN, ACCESS_REVOKED)


async def test_relay_short_token_ends_on_time_despite_long_recheck(tmp_path: Path) -> None:
    """With the largest recheck interval (60 s) and a long-lived stream already
    open, a stream opened later with a 3-second token is still reset at its
    token's expiry: the checker re-plans for the earliest expiry, it does not
    wait out the interval."""
    async with running_env(tmp_path, recheck_seconds=60.0) as env:
        echo = await start_echo_server()
        keys = await env.register("rg1", "alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        await env.wait_agent("rg1/alpha")
        await env.grant(DEMO_OID, "cluster-user", SCOPE)
        await env.grant(BOB_OID, "cluster-user", SCOPE)
        _, bob_stream = await _live_stream(env, env.token("bob"))
        _, short_stream = await _live_stream(env, env.token("demo", lifetime=3))
        reset = await _reset_of(short_stream)
        assert (reset.code, reset.reason) == (ErrorCode.FORBIDDEN, TOKEN_EXPIRED)
        assert await _echo(bob_stream, b"untouched") == b"untouched"
        echo.close()
