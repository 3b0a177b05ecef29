"""arc-proxy's relay session renews its token before expiry; open streams run
on the old session until the token that opened them expires
(RelaySessionKeeper against a real in-process relay, sandbox issuer and agent;
3-second tokens)."""

from __future__ import annotations

import asyncio

import pytest

from client.auth import Token, TokenSource
from client.config import AuthConfig, ClientConfig
from client.relay_client import RelaySessionKeeper
from tests.support.relay import DEMO_OID, RelayEnv
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, until
from tunnel import ErrorCode, StreamReset

LIFETIME = 3


def test_token_renews_at_a_quarter_of_a_short_lifetime() -> None:
    """Long tokens renew 60 s before expiry; short ones at 3/4 of their life."""
    assert Token("t", 1000.0 + 3600, issued_at=1000.0).renew_at() == 1000.0 + 3600 - 60
    assert Token("t", 1004.0, issued_at=1000.0).renew_at() == 1003.0
    assert Token("t", 5000.0).renew_at() == 5000.0 - 60  # issue time unknown: fixed margin


async def _echo(stream: object, data: bytes) -> bytes:
    await stream.write(data)  # type: ignore[attr-defined]
    got = b""
    async with asyncio.timeout(WAIT):
        while len(got) < len(data):
            got += await stream.read()  # type: ignore[attr-defined]
    return got


async def test_keeper_renews_session_and_old_stream_ends_at_token_expiry(relay_env: RelayEnv) -> None:
    """A stream opened on the first session runs on after the keeper renewed
    the session (GOAWAY on the old one) but not past the expiry of the token
    that opened it: the relay resets it with FORBIDDEN "token expired" (issue
    12 item 6). New streams go to the newest session; the old session closes
    once its stream ended."""
    echo = await start_echo_server()
    keys = await relay_env.register("rg1", "alpha")
    await relay_env.grant(DEMO_OID, "cluster-user", "/resourceGroups/rg1/clusters/alpha")
    await relay_env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await relay_env.wait_agent("rg1/alpha")
    idp = relay_env.idp
    auth = AuthConfig(token_endpoint=idp.token_endpoint, ca_file=str(idp.ca_file), client_id=idp.cli_client_id,
                      username="demo@contoso.example", password="demo-password", lifetime=str(LIFETIME))
    assert relay_env.relay.ca_file is not None
    config = ClientConfig(relay_url=relay_env.relay.url, relay_ca_file=str(relay_env.relay.ca_file), auth=auth)
    keeper = RelaySessionKeeper(config, TokenSource(auth), name="renewal-test")
    try:
        first = await keeper.start()
        stream = await (await keeper.session()).open_stream(b"rg1/alpha", timeout=WAIT)
        assert await _echo(stream, b"before") == b"before"
        await until(lambda: keeper.renewals >= 1, "the keeper to renew its session")
        assert first.draining  # we sent GOAWAY on it
        with pytest.raises(StreamReset) as reset:
            async with asyncio.timeout(WAIT):
                while await stream.read():
                    pass
        assert (reset.value.code, reset.value.reason) == (ErrorCode.FORBIDDEN, "token expired")
        current = await keeper.session()
        assert current is not first and not current.draining
        other = await current.open_stream(b"rg1/alpha", timeout=WAIT)
        assert await _echo(other, b"new session") == b"new session"
        await other.aclose()
        await stream.aclose()
        async with asyncio.timeout(WAIT):
            await first.wait_closed()
    finally:
        await keeper.close()
        echo.close()
