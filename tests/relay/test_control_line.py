"""The agent's control stream carries one JSON object per line; a line longer
than the relay's bound (4 KiB) ends that stream with PROTOCOL_ERROR and
nothing else: the agent's session stays up."""

from __future__ import annotations

import asyncio

import pytest

from identity import sign_agent_assertion
from relay.agent_endpoint import MAX_CONTROL_LINE
from tests.support.relay import RelayEnv
from tests.support.waits import WAIT
from tunnel import CONTROL_TARGET, ErrorCode, StreamReset, TunnelSession, ws_connect_kwargs


async def test_control_line_beyond_the_bound_resets_only_that_stream(relay_env: RelayEnv) -> None:
    keys = await relay_env.register("rg1", "alpha")
    url = relay_env.relay.url + "/agent/v1/connect"
    token = sign_agent_assertion(keys.private_key_pem, "rg1/alpha", url)
    ws = await relay_env.http.ws_connect(url, headers={"Authorization": f"Bearer {token}"},
                                         **ws_connect_kwargs())
    session = TunnelSession(ws, is_client=True, name="test-agent")
    runner = asyncio.ensure_future(session.run())
    try:
        stream = await session.open_stream(CONTROL_TARGET, timeout=WAIT)
        with pytest.raises(StreamReset) as reset:
            async with asyncio.timeout(WAIT):
                await stream.write(b"x" * (2 * MAX_CONTROL_LINE))  # no newline, ever
                await stream.read()  # the relay never writes: this waits for the RESET
        assert reset.value.code == ErrorCode.PROTOCOL_ERROR
        # The session survives: a well-formed control stream still works.
        again = await session.open_stream(CONTROL_TARGET, timeout=WAIT)
        await again.write(b'{"agentVersion": "1.2.3"}\n')
        async with asyncio.timeout(WAIT):
            while ((await relay_env.state.registry.get("rg1/alpha")).agent_version or "") != "1.2.3":
                await asyncio.sleep(0.05)
    finally:
        await session.close()
        runner.cancel()
