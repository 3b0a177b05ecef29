"""A principal belongs to its issuer (issue 17 item 6, OIDC Core 5.7): with
two real sandbox issuers trusted, issuer B's token carrying issuer A's admin
``oid`` and group ids gets nothing at the relay: no role list, no cluster
list, no cluster connect. Assignments name their assignee's issuer, and rows
made before they did are claimed for the relay's only issuer."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from relay import IssuerConfig, SqliteDatabase
from relay.config import ConfigError, relay_config_from_dict
from relay.roles import RoleAssignment, SqliteRoleStore
from sandbox.idp import SandboxIdp
from tests.support.processes import child_env
from tests.support.relay import ADMIN_OID, DEMO_OID, VIEWERS_GROUP, RelayEnv, roundtrip, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT
from tunnel import ErrorCode, StreamRefused

SCOPE = "/resourceGroups/rg1/clusters/alpha"


@pytest.fixture
async def issuer_b(tmp_path: Path) -> AsyncIterator[SandboxIdp]:
    """A second sandbox issuer: its own URL and keys, the same demo directory
    (so its users carry exactly issuer A's oids and group ids)."""
    idp = SandboxIdp(tmp_path / "idp-b")
    await idp.start()
    yield idp
    await idp.stop()


async def _agent_with_echo(env: RelayEnv) -> None:
    echo = await start_echo_server()
    keys = await env.register("rg1", "alpha")
    await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
    await env.wait_agent("rg1/alpha")


async def _open_outcome(env: RelayEnv, token: str) -> ErrorCode | bytes:
    client = await env.client(token)
    try:
        return await roundtrip(client, b"rg1/alpha", b"hello")
    except StreamRefused as exc:
        return exc.code


async def test_other_issuer_cannot_act_as_admin_or_user(tmp_path: Path, issuer_b: SandboxIdp) -> None:
    """B's token with A's admin oid and A's group ids: 403 on the role list,
    an empty cluster list, a refused connect; A's own principals keep their roles."""
    b = IssuerConfig(issuer_b.issuer, ("api://cluster-connect",), issuer_b.ca_file, alias="b")
    async with running_env(tmp_path / "a", alias="a", extra_issuers=(b,)) as env:
        await _agent_with_echo(env)
        admin_a = env.token("admin")
        assert ADMIN_OID in str(env.relay.config.bootstrap_admins)
        status, body = await env.api("PUT", "/api/v1/roleAssignments/demo", admin_a, {
            "principalId": DEMO_OID, "principalIssuer": "a", "role": "cluster-user", "scope": SCOPE})
        assert status == 201 and body["principalIssuer"] == env.idp.issuer
        status, _ = await env.api("PUT", "/api/v1/roleAssignments/viewers", admin_a, {
            "principalId": VIEWERS_GROUP, "principalType": "Group", "principalIssuer": env.idp.issuer,
            "role": "admin", "scope": "/"})
        assert status == 201
        status, body = await env.api("GET", "/api/v1/roleAssignments", admin_a)
        assert status == 200 and {a["id"] for a in body["value"]} == {"demo", "viewers"}

        # Issuer B, same oid as A's admin, A's admin-holding group id in its groups claim.
        impostor = issuer_b.mint("admin", groups=[VIEWERS_GROUP])
        status, body = await env.api("GET", "/api/v1/roleAssignments", impostor)
        assert status == 403, body
        status, body = await env.api("GET", "/api/v1/clusters", impostor)
        assert status == 200 and body["value"] == []
        status, _ = await env.api("PUT", "/api/v1/roleAssignments/mine", impostor, {
            "principalId": ADMIN_OID, "principalIssuer": "b", "role": "admin", "scope": "/"})
        assert status == 403
        assert await _open_outcome(env, issuer_b.mint("demo")) == ErrorCode.FORBIDDEN
        assert await _open_outcome(env, env.token("demo")) == b"hello"

        # Without principalIssuer the relay (trusting two) cannot tell whose id it is.
        status, body = await env.api("PUT", "/api/v1/roleAssignments/x", admin_a, {
            "principalId": DEMO_OID, "role": "viewer", "scope": "/"})
        assert status == 400 and "principalIssuer is required" in body["error"]["message"]
        status, body = await env.api("PUT", "/api/v1/roleAssignments/x", admin_a, {
            "principalId": DEMO_OID, "principalIssuer": "https://elsewhere.example", "role": "viewer",
            "scope": "/"})
        assert status == 400 and "trusted issuer" in body["error"]["message"]
        # Assigned to B's principal by name of B, B's demo may connect.
        status, _ = await env.api("PUT", "/api/v1/roleAssignments/demo-b", admin_a, {
            "principalId": DEMO_OID, "principalIssuer": "b", "role": "cluster-user", "scope": SCOPE})
        assert status == 201
        assert await _open_outcome(env, issuer_b.mint("demo")) == b"hello"


async def _old_row(tmp: Path) -> None:
    """A role assignment as a relay before migration 2 stored it (no issuer)."""
    db = SqliteDatabase(tmp / "relay" / "relay.db")
    await SqliteRoleStore(db).put(RoleAssignment("old", DEMO_OID, "User", "cluster-user", SCOPE))
    db.close()


async def test_old_assignments_belong_to_the_only_issuer(tmp_path: Path) -> None:
    """Started with one issuer, the relay gives unscoped rows to it: the old
    assignment keeps granting access."""
    await _old_row(tmp_path)
    async with running_env(tmp_path) as env:
        old = await env.state.roles.get("old")
        assert old is not None and old.principal_issuer == env.idp.issuer
        await _agent_with_echo(env)
        assert await _open_outcome(env, env.token("demo")) == b"hello"


async def test_old_assignments_match_nobody_beside_several_issuers(
        tmp_path: Path, issuer_b: SandboxIdp, caplog: pytest.LogCaptureFixture) -> None:
    """Started with two issuers, the relay cannot tell whose an unscoped row
    is: it stays unscoped, grants nothing, and one warning says what to do."""
    caplog.set_level(logging.WARNING, logger="relay")
    await _old_row(tmp_path)
    b = IssuerConfig(issuer_b.issuer, ("api://cluster-connect",), issuer_b.ca_file)
    async with running_env(tmp_path, extra_issuers=(b,)) as env:
        lines = [r.getMessage() for r in caplog.records if "match nobody" in r.getMessage()]
        assert len(lines) == 1 and "count=1" in lines[0] and "--assignee-issuer" in lines[0]
        await _agent_with_echo(env)
        assert await _open_outcome(env, env.token("demo")) == ErrorCode.FORBIDDEN


def test_top_level_admins_need_a_single_issuer() -> None:
    """Beside several issuers a bare admin id is refused in one line; under
    its issuer it is that issuer's admin only."""
    two = [{"issuer": "https://a.example/"}, {"issuer": "https://b.example/", "admins": ["x"]}]
    with pytest.raises(ConfigError) as info:
        relay_config_from_dict({"oidc": {"issuers": two}, "admins": ["x"]})
    assert str(info.value).splitlines() == [
        "relay config: admins: a bare id could be any of the 2 trusted issuers' principal: list each admin "
        "under its issuer's oidc.issuers[].admins (docs/identity-providers.md)"]
    config = relay_config_from_dict({"oidc": {"issuers": two}})
    assert config.bootstrap_admins == {("https://b.example/", "x")}
    one = relay_config_from_dict({"oidc": {"issuers": two[:1]}, "admins": ["y"]})
    assert one.bootstrap_admins == {("https://a.example/", "y")}
    with pytest.raises(ConfigError, match="alias 'a' names two issuers"):
        relay_config_from_dict({"oidc": {"issuers": [{**two[0], "alias": "a"}, {**two[1], "alias": "a"}]}})


async def _arcctl(env: RelayEnv, token: str, *args: str, **auth: str) -> tuple[int, str, str]:
    """``arcctl ARGS`` as a process, with a client config whose token is
    ``token`` (and more ``auth`` keys)."""
    (env.tmp / "token").write_text(token)
    (env.tmp / "relay-ca.crt").write_bytes(env.relay.ca_pem or b"")
    config = env.tmp / "client.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": env.relay.url, "ca_file": str(env.tmp / "relay-ca.crt")},
                                      "auth": {"token_command": f"cat {env.tmp / 'token'}", **auth}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl", *args, "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env())
    out, err = await asyncio.wait_for(proc.communicate(), WAIT * 3)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_arcctl_assign_names_the_issuer_and_refuses_a_user_name(
        tmp_path: Path, issuer_b: SandboxIdp) -> None:
    """``arcctl role assign --assignee alice@contoso.example`` is refused in one
    line saying to pass the object id (stored, it would never match);
    ``--assignee-issuer`` names whose id it is, by alias."""
    b = IssuerConfig(issuer_b.issuer, ("api://cluster-connect",), issuer_b.ca_file, alias="b")
    async with running_env(tmp_path, alias="a", extra_issuers=(b,)) as env:
        admin = env.token("admin")
        code, out, err = await _arcctl(env, admin, "role", "assign", "--role", "viewer",
                                       "--assignee", "alice@contoso.example", "--assignee-issuer", "a", "-g", "rg1")
        assert code != 0 and out == "" and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert "is a user name" in err and "object id (oid)" in err and "--assignee-issuer" in err
        assert await env.state.roles.list_all() == []

        code, out, err = await _arcctl(env, admin, "role", "assign", "--role", "cluster-user",
                                       "--assignee", DEMO_OID, "--assignee-issuer", "b", "-n", "alpha", "-g", "rg1")
        assert code == 0, err
        assert json.loads(out)["principalIssuer"] == issuer_b.issuer
        await _agent_with_echo(env)
        assert await _open_outcome(env, issuer_b.mint("demo")) == b"hello"
        assert await _open_outcome(env, env.token("demo")) == ErrorCode.FORBIDDEN

        # The same id under both issuers: list and delete name one by its issuer.
        code, _, err = await _arcctl(env, admin, "role", "assign", "--role", "viewer", "--assignee", DEMO_OID,
                                     "--assignee-issuer", "a", "-g", "rg1")
        assert code == 0, err
        code, out, err = await _arcctl(env, admin, "role", "list", "--assignee", DEMO_OID,
                                       "--assignee-issuer", "b")
        assert code == 0, err
        assert [a["principalIssuer"] for a in json.loads(out)] == [issuer_b.issuer]
        code, _, err = await _arcctl(env, admin, "role", "delete", "--assignee", DEMO_OID,
                                     "--assignee-issuer", "b")
        assert code == 0, err
        assert [a.principal_issuer for a in await env.state.roles.list_all()] == [env.idp.issuer]


async def test_arcctl_assign_resolves_a_user_name_at_the_directory(tmp_path: Path) -> None:
    """With ``auth.directory_url`` (the sandbox issuer's Graph-shaped users
    lookup) a user name becomes its object id before anything is stored; an
    unknown name is one line and stores nothing."""
    async with running_env(tmp_path) as env:
        directory = {"directory_url": f"{env.idp.url}/v1.0", "ca_file": str(env.idp.ca_file)}
        code, out, err = await _arcctl(env, env.token("admin"), "role", "assign", "--role", "cluster-user",
                                       "--assignee", "demo@contoso.example", "-n", "alpha", "-g", "rg1",
                                       **directory)
        assert code == 0, err
        assert json.loads(out)["principalId"] == DEMO_OID
        assert f"demo@contoso.example is object id {DEMO_OID}" in err
        await _agent_with_echo(env)
        assert await _open_outcome(env, env.token("demo")) == b"hello"

        code, out, err = await _arcctl(env, env.token("admin"), "role", "assign", "--role", "viewer",
                                       "--assignee", "nobody@contoso.example", "-g", "rg1", **directory)
        assert code != 0 and out == "" and len(err.strip().splitlines()) == 1, err
        assert "has no user nobody@contoso.example" in err and "Traceback" not in err
        assert len(await env.state.roles.list_all()) == 1
