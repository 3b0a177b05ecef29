"""Authorization matches immutable ids only, unless mutable claims are opted in
(issue 12 item 8, "nOAuth"): a role assigned to a ``upn`` grants nothing by
default, and does with ``authorization.match_mutable_claims: [upn]``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from relay.config import ConfigError, RelayConfig, authorization_warnings, relay_config_from_dict
from tests.support.relay import DEMO_OID, RelayEnv, roundtrip, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT
from tunnel import ErrorCode, StreamRefused

DEMO_UPN = "demo@contoso.example"
SCOPE = "/resourceGroups/rg1/clusters/alpha"


async def _open_outcome(env: RelayEnv) -> ErrorCode | bytes:
    """Open ``rg1/alpha`` as demo: the echoed bytes, or the refusal code."""
    client = await env.client(env.token("demo"))
    try:
        return await roundtrip(client, b"rg1/alpha", b"hello")
    except StreamRefused as exc:
        return exc.code


async def _agent_with_echo(env: RelayEnv) -> None:
    echo = await start_echo_server()
    keys = await env.register("rg1", "alpha")
    await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await env.wait_agent("rg1/alpha")


async def test_relay_ignores_upn_assignment_by_default(tmp_path: Path) -> None:
    """A cluster-user assignment to demo's upn does not let demo connect; one to
    demo's oid does."""
    async with running_env(tmp_path) as env:
        await _agent_with_echo(env)
        await env.grant(DEMO_UPN, "cluster-user", SCOPE)
        assert await _open_outcome(env) == ErrorCode.FORBIDDEN
        await env.grant(DEMO_OID, "cluster-user", SCOPE)
        assert await _open_outcome(env) == b"hello"


async def test_relay_matches_upn_with_opt_in(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With match_mutable_claims [upn] the upn assignment grants access, and the
    relay warns at start-up that it does."""
    caplog.set_level(logging.WARNING, logger="relay")
    async with running_env(tmp_path, match_mutable_claims=("upn",)) as env:
        assert any("match_mutable_claims" in r.getMessage() for r in caplog.records)
        await _agent_with_echo(env)
        await env.grant(DEMO_UPN, "cluster-user", SCOPE)
        assert await _open_outcome(env) == b"hello"


async def test_relay_admins_by_upn_need_opt_in(tmp_path: Path) -> None:
    """``admins: [<upn>]`` gives nothing by default (403 on the management API)."""
    async with running_env(tmp_path, admins=(DEMO_UPN,)) as env:
        status, _ = await env.api("GET", "/api/v1/roleAssignments/x", env.token("demo"))
        assert status == 403
    async with running_env(tmp_path / "optin", admins=(DEMO_UPN,),
                           match_mutable_claims=("upn",)) as env:
        status, _ = await env.api("GET", "/api/v1/roleAssignments/x", env.token("demo"))
        assert status == 404


async def test_relay_matches_issuer_scoped_sub(tmp_path: Path) -> None:
    """An assignment to ``<iss>#<sub>`` grants access (tokens without ``oid``);
    a bare ``sub`` from a token without ``oid`` does not."""
    async with running_env(tmp_path) as env:
        await _agent_with_echo(env)
        client = await env.client(env.token("demo", oid=None, sub="subject-1"))
        await env.grant("subject-1", "cluster-user", SCOPE)
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(b"rg1/alpha", timeout=WAIT)
        assert refused.value.code == ErrorCode.FORBIDDEN
        await env.grant(f"{env.idp.issuer}#subject-1", "cluster-user", SCOPE)
        assert await roundtrip(client, b"rg1/alpha", b"sub") == b"sub"


def test_relay_config_parses_authorization_section() -> None:
    """The keys parse, unknown claims and out-of-range intervals are one-line errors."""
    config = relay_config_from_dict({"authorization": {"match_mutable_claims": ["upn"],
                                                       "recheck_seconds": 5}})
    assert config.match_mutable_claims == ("upn",) and config.recheck_seconds == 5
    assert relay_config_from_dict({}).match_mutable_claims == ()
    with pytest.raises(ConfigError, match="match_mutable_claims"):
        relay_config_from_dict({"authorization": {"match_mutable_claims": ["groups"]}})
    with pytest.raises(ConfigError, match="recheck_seconds"):
        relay_config_from_dict({"authorization": {"recheck_seconds": 3600}})
    assert any("matches nobody" in w for w in authorization_warnings(RelayConfig(admins=(DEMO_UPN,))))
    assert authorization_warnings(RelayConfig(admins=(DEMO_OID,))) == []
