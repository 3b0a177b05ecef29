"""Central Kubernetes roles at the relay (issue 18, items 1 and 2): the
namespace scope, the per-cluster switch, and the list each agent is pushed
over its session on connect and on every change."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from identity import sign_agent_assertion
from relay.central_rbac_feed import MAX_FEED_BYTES, cluster_document
from relay.roles import RoleAssignment
from tests.support.relay import BOB_OID, DEMO_OID, VIEWERS_GROUP, RelayEnv, running_env
from tests.support.waits import WAIT, until
from tunnel import CENTRAL_RBAC_TARGET, TunnelSession, TunnelStream, ws_connect_kwargs

CLUSTER = "/api/v1/resourceGroups/rg1/clusters/alpha"
SCOPE = "/resourceGroups/rg1/clusters/alpha"


class FakeAgentFeed:
    """What a real agent's session receives on ``central-rbac`` streams."""

    def __init__(self) -> None:
        self.documents: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_stream(self, stream: TunnelStream) -> None:
        assert stream.target == CENTRAL_RBAC_TARGET
        stream.accept()
        body = b""
        while chunk := await stream.read(MAX_FEED_BYTES):
            body += chunk
        await stream.write(b"ok\n")
        await stream.write_eof()
        await stream.aclose()
        await self.documents.put(json.loads(body))

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            return await self.documents.get()

    async def until(self, check: Any) -> dict[str, Any]:
        """The first document (from now) for which ``check`` holds."""
        while not check(doc := await self.next()):
            pass
        return doc


@asynccontextmanager
async def fake_agent(relay_env: RelayEnv, cid: str = "rg1/alpha") -> AsyncIterator[FakeAgentFeed]:
    rg, name = cid.split("/")
    keys = await relay_env.register(rg, name)
    url = relay_env.relay.url + "/agent/v1/connect"
    token = sign_agent_assertion(keys.private_key_pem, cid, url)
    ws = await relay_env.http.ws_connect(url, headers={"Authorization": f"Bearer {token}"},
                                         **ws_connect_kwargs())
    feed = FakeAgentFeed()
    session = TunnelSession(ws, is_client=True, name="test-agent", on_stream=feed.on_stream)
    runner = asyncio.ensure_future(session.run())
    try:
        yield feed
    finally:
        await session.close()
        runner.cancel()


def _ids(doc: dict[str, Any]) -> list[str]:
    return [a["id"] for a in doc["assignments"]]


async def test_relay_pushes_central_rbac_list_on_connect_switch_and_every_change(relay_env: RelayEnv) -> None:
    """An agent hears ``enabled: false`` on connect; after the switch is
    turned on, its list; each assign/delete of a Kubernetes role that
    concerns its cluster (cluster, group, namespace scope) is pushed at once,
    others (another cluster's namespace, relay roles) never; turning the
    switch off pushes ``enabled: false`` with no assignments."""
    admin = relay_env.token("admin")
    async with fake_agent(relay_env) as agent:
        first = await agent.next()
        assert first == {"version": 2, "cluster": "rg1/alpha", "enabled": False, "assignments": []}
        status, body = await relay_env.api("PUT", CLUSTER + "/centralRbac", admin, {"enabled": True})
        assert (status, body) == (200, {"enabled": True, "changed": True})
        assert (await agent.until(lambda d: d["enabled"]))["assignments"] == []
        status, body = await relay_env.api("PUT", CLUSTER + "/centralRbac", admin, {"enabled": True})
        assert (status, body) == (200, {"enabled": True, "changed": False}), "enabling twice changes nothing"

        puts = {
            "w-ns": (BOB_OID, "User", "kubernetes-writer", SCOPE + "/namespaces/payments"),
            "v-rg": (VIEWERS_GROUP, "Group", "kubernetes-viewer", "/resourceGroups/rg1"),
            "other-ns": (BOB_OID, "User", "kubernetes-admin", "/resourceGroups/rg1/clusters/beta/namespaces/x"),
            "relay-role": (DEMO_OID, "User", "cluster-user", SCOPE),
        }
        for aid, (pid, ptype, role, scope) in puts.items():
            status, body = await relay_env.api("PUT", f"/api/v1/roleAssignments/{aid}", admin, {
                "principalId": pid, "principalType": ptype, "role": role, "scope": scope})
            assert status == 201, body
        doc = await agent.until(lambda d: len(d["assignments"]) == 2)
        assert doc["assignments"] == [
            {"id": "v-rg", "principalId": VIEWERS_GROUP, "principalIssuer": relay_env.idp.issuer,
             "principalType": "Group", "role": "kubernetes-viewer", "namespace": None},
            {"id": "w-ns", "principalId": BOB_OID, "principalIssuer": relay_env.idp.issuer,
             "principalType": "User", "role": "kubernetes-writer", "namespace": "payments"},
        ]
        started = time.perf_counter()
        status, _ = await relay_env.api("DELETE", "/api/v1/roleAssignments/w-ns", admin)
        assert status == 204
        assert _ids(await agent.until(lambda d: "w-ns" not in _ids(d))) == ["v-rg"]
        print(f"central rbac: delete to agent list {1000 * (time.perf_counter() - started):.1f} ms")

        status, body = await relay_env.api("PUT", CLUSTER + "/centralRbac", admin, {"enabled": False})
        assert (status, body) == (200, {"enabled": False, "changed": True})
        off = await agent.until(lambda d: not d["enabled"])
        assert off["assignments"] == []


async def test_relay_refuses_namespace_scope_for_relay_roles_and_bad_switch_bodies(relay_env: RelayEnv) -> None:
    """A namespace scope takes only a Kubernetes role (400 names the four);
    a malformed namespace is a 400; the switch needs ``{"enabled": bool}``,
    a registered cluster (404) and the onboarding role (403 without); a
    deleted cluster loses it."""
    admin, bob = relay_env.token("admin"), relay_env.token("bob")
    status, body = await relay_env.api("PUT", "/api/v1/roleAssignments/x", admin, {
        "principalId": BOB_OID, "role": "cluster-user", "scope": SCOPE + "/namespaces/payments"})
    assert status == 400 and "kubernetes-viewer" in body["error"]["message"]
    status, body = await relay_env.api("PUT", "/api/v1/roleAssignments/x", admin, {
        "principalId": BOB_OID, "role": "kubernetes-viewer", "scope": SCOPE + "/namespaces/Not_A_Label"})
    assert status == 400 and "namespaces/NS" in body["error"]["message"]
    status, body = await relay_env.api("PUT", CLUSTER + "/centralRbac", admin, {"enabled": True})
    assert status == 404 and "arcctl connect" in body["error"]["message"]
    await relay_env.register("rg1", "alpha")
    for bad in ({"enabled": "yes"}, {}, {"enabled": True, "more": 1}):
        status, body = await relay_env.api("PUT", CLUSTER + "/centralRbac", admin, bad)
        assert status == 400, bad
    status, body = await relay_env.api("PUT", CLUSTER + "/centralRbac", bob, {"enabled": True})
    assert status == 403 and "onboarding" in body["error"]["message"]
    status, body = await relay_env.api("GET", CLUSTER + "/centralRbac", admin)
    assert (status, body) == (200, {"enabled": False})
    # Deleting the cluster turns the mode off: registered again, it starts without it.
    assert (await relay_env.api("PUT", CLUSTER + "/centralRbac", admin, {"enabled": True}))[0] == 200
    assert (await relay_env.api("DELETE", CLUSTER, admin))[0] == 204
    await relay_env.register("rg1", "alpha")
    assert await relay_env.api("GET", CLUSTER + "/centralRbac", admin) == (200, {"enabled": False})


def test_relay_cluster_document_holds_only_what_concerns_the_cluster() -> None:
    """Scopes above the cluster, the cluster and its namespaces count; a
    same-prefix cluster (``alpha2``), another cluster's namespace and relay
    roles do not, nor an assignment naming no issuer (made before issuers:
    it matches nobody); each carries its assignee's issuer; a disabled
    cluster's document lists nothing."""
    def a(aid: str, role: str, scope: str, issuer: str = "https://idp.example") -> RoleAssignment:
        return RoleAssignment(aid, "p", "User", role, scope, principal_issuer=issuer)

    assignments = [a("1", "kubernetes-cluster-admin", "/"), a("2", "kubernetes-admin", "/resourceGroups/rg1"),
                   a("3", "kubernetes-viewer", SCOPE), a("4", "kubernetes-writer", SCOPE + "/namespaces/n"),
                   a("5", "kubernetes-viewer", "/resourceGroups/rg1/clusters/alpha2"),
                   a("6", "kubernetes-viewer", "/resourceGroups/rg1/clusters/alpha2/namespaces/n"),
                   a("7", "admin", SCOPE), a("8", "kubernetes-viewer", "/resourceGroups/rg2"),
                   a("9", "kubernetes-viewer", SCOPE, issuer="")]
    doc = json.loads(cluster_document("rg1/alpha", True, assignments))
    assert [(x["id"], x["namespace"], x["principalIssuer"]) for x in doc["assignments"]] == [
        ("1", None, "https://idp.example"), ("2", None, "https://idp.example"),
        ("3", None, "https://idp.example"), ("4", "n", "https://idp.example")]
    assert json.loads(cluster_document("rg1/alpha", False, assignments))["assignments"] == []


async def test_relay_central_rbac_switch_persists_in_postgresql_across_restart(
        tmp_path: Path, postgres_dsn: str) -> None:
    """On PostgreSQL (migration 3) the switch is idempotent both ways and
    survives a relay restart; the agent then hears ``enabled: true`` again."""
    admin_path = CLUSTER + "/centralRbac"
    async with running_env(tmp_path, database_url=postgres_dsn) as env:
        admin = env.token("admin")
        await env.register("rg1", "alpha")
        assert await env.api("PUT", admin_path, admin, {"enabled": True}) == (200, {"enabled": True, "changed": True})
        assert await env.api("PUT", admin_path, admin, {"enabled": True}) == (200, {"enabled": True, "changed": False})
        await env.restart_relay()
        assert await env.api("GET", admin_path, env.token("admin")) == (200, {"enabled": True})
        async with fake_agent(env) as agent:
            assert (await agent.next())["enabled"] is True
        assert await env.api("PUT", admin_path, env.token("admin"), {"enabled": False}) == (
            200, {"enabled": False, "changed": True})
        assert await env.api("PUT", admin_path, env.token("admin"), {"enabled": False}) == (
            200, {"enabled": False, "changed": False})


async def test_relay_does_not_send_a_central_rbac_list_over_the_bound(relay_env: RelayEnv, monkeypatch: Any,
                                                                      caplog: Any) -> None:
    """A cluster's list larger than ``MAX_FEED_BYTES`` is not sent (one
    WARNING naming the bound); the agent keeps the previous list, and the
    next list within the bound goes out."""
    import logging

    import relay.central_rbac_feed as feed_module

    admin = relay_env.token("admin")
    async with fake_agent(relay_env) as agent:
        await agent.next()
        await relay_env.api("PUT", CLUSTER + "/centralRbac", admin, {"enabled": True})
        small = await agent.until(lambda d: d["enabled"])
        monkeypatch.setattr(feed_module, "MAX_FEED_BYTES", len(json.dumps(small)) + 10)
        caplog.set_level(logging.WARNING, logger="relay")
        for i in range(3):
            status, _ = await relay_env.api("PUT", f"/api/v1/roleAssignments/big{i}", admin, {
                "principalId": BOB_OID, "role": "kubernetes-viewer", "scope": SCOPE})
            assert status == 201
        await until(lambda: any("central rbac list not sent" in r.getMessage() for r in caplog.records),
                    "the relay's refusal line")
        assert agent.documents.empty(), "a list over the bound was sent"
        monkeypatch.setattr(feed_module, "MAX_FEED_BYTES", MAX_FEED_BYTES)
        status, _ = await relay_env.api("PUT", "/api/v1/roleAssignments/big3", admin, {
            "principalId": BOB_OID, "role": "kubernetes-viewer", "scope": SCOPE})
        assert status == 201
        await agent.until(lambda d: len(d["assignments"]) == 4)
