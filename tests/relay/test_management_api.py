"""Management REST API with real tokens from the sandbox issuer, and role checks."""

from __future__ import annotations

from certs import generate_key_pair
from tests.support.relay import BOB_OID, DEMO_OID, VIEWERS_GROUP, RelayEnv

CLUSTER = "/api/v1/resourceGroups/rg1/clusters/alpha"



def _registration() -> dict[str, str]:
    return {"location": "westeurope",
            "agentPublicKeyCertificate": generate_key_pair("alpha").certificate_pem.decode(),
            "tlsServerName": "kube-aad-proxy.alpha"}


async def test_api_admin_registers_shows_lists_deletes_cluster(relay_env: RelayEnv) -> None:
    """A bootstrap admin can do the whole cluster life cycle."""
    admin = relay_env.token("admin")
    status, body = await relay_env.api("PUT", CLUSTER, admin, _registration())
    assert status == 201, body
    assert body["id"] == "rg1/alpha" and body["connectivityStatus"] == "Connecting"
    status, body = await relay_env.api("PUT", CLUSTER, admin, _registration())
    assert status == 200
    status, body = await relay_env.api("GET", CLUSTER, admin)
    assert status == 200 and body["tlsServerName"] == "kube-aad-proxy.alpha"
    status, body = await relay_env.api("GET", "/api/v1/clusters?resourceGroup=rg1", admin)
    assert status == 200 and [c["id"] for c in body["value"]] == ["rg1/alpha"]
    status, body = await relay_env.api("DELETE", CLUSTER + "?dryRun=true", admin)
    assert status == 204
    status, body = await relay_env.api("GET", CLUSTER, admin)
    assert status == 200, "a dry-run delete deleted the registration"
    status, body = await relay_env.api("DELETE", CLUSTER, admin)
    assert status == 204
    status, body = await relay_env.api("GET", CLUSTER, admin)
    assert status == 404 and body["error"]["code"] == "NotFound"
    status, body = await relay_env.api("DELETE", CLUSTER + "?dryRun=true", admin)
    assert status == 404 and body["error"]["code"] == "NotFound"


async def test_api_refuses_missing_and_invalid_tokens(relay_env: RelayEnv) -> None:
    """No bearer, a garbage bearer, a wrong audience and an expired token are 401."""
    status, body = await relay_env.api("GET", "/api/v1/clusters", None)
    assert status == 401 and body["error"]["code"] == "Unauthorized"
    for token in ("garbage", relay_env.token("demo", audience="api://other"),
                  relay_env.token("demo", lifetime=-3600)):
        status, body = await relay_env.api("GET", "/api/v1/clusters", token)
        assert status == 401 and body["error"]["code"] == "InvalidToken", body
        assert token not in body["error"]["message"]
    async with relay_env.http.get(relay_env.relay.health_url + "/metrics") as resp:
        assert 'arc_relay_auth_failures_total{endpoint="api"' in await resp.text()


async def test_api_enforces_roles(relay_env: RelayEnv) -> None:
    """viewer reads only; onboarding registers; cluster-user shows its cluster;
    nobody but admins manages role assignments; no role means 403."""
    admin, demo, bob = relay_env.token("admin"), relay_env.token("demo"), relay_env.token("bob")
    status, _ = await relay_env.api("PUT", CLUSTER, demo, _registration())
    assert status == 403
    status, _ = await relay_env.api("PUT", "/api/v1/roleAssignments/onb", admin, {
        "principalId": DEMO_OID, "principalType": "User", "role": "onboarding",
        "scope": "/resourceGroups/rg1"})
    assert status == 201
    status, _ = await relay_env.api("PUT", CLUSTER, demo, _registration())
    assert status == 201
    # bob: no role yet -> 403 (same answer whether or not the cluster exists)
    status, body = await relay_env.api("GET", CLUSTER, bob)
    assert status == 403 and body["error"]["code"] == "Forbidden"
    status, body = await relay_env.api("GET", "/api/v1/clusters", bob)
    assert status == 200 and body["value"] == []
    # viewer through a group
    status, _ = await relay_env.api("PUT", "/api/v1/roleAssignments/viewers", admin, {
        "principalId": VIEWERS_GROUP, "principalType": "Group", "role": "viewer", "scope": "/"})
    assert status == 201
    status, _ = await relay_env.api("GET", CLUSTER, bob)
    assert status == 200
    for path in (CLUSTER + "?dryRun=true", CLUSTER):  # the dry run answers as the delete would
        status, body = await relay_env.api("DELETE", path, bob)
        assert status == 403 and "onboarding" in body["error"]["message"]
    status, _ = await relay_env.api("PUT", "/api/v1/roleAssignments/x", bob, {
        "principalId": BOB_OID, "role": "admin", "scope": "/"})
    assert status == 403
    # bob administers nothing: told so, not handed an empty list
    status, body = await relay_env.api("GET", "/api/v1/roleAssignments", bob)
    assert status == 403 and "no admin role at any scope" in body["error"]["message"]
    status, body = await relay_env.api("GET", "/api/v1/roleAssignments?scope=/resourceGroups/rg1", bob)
    assert status == 403 and "no admin role at scope /resourceGroups/rg1" in body["error"]["message"]
    status, body = await relay_env.api("GET", "/api/v1/roleAssignments", admin)
    assert {a["id"] for a in body["value"]} == {"onb", "viewers"}
    status, _ = await relay_env.api("DELETE", "/api/v1/roleAssignments/viewers", admin)
    assert status == 204
    status, _ = await relay_env.api("GET", CLUSTER, bob)
    assert status == 403


async def test_api_rejects_bad_requests(relay_env: RelayEnv) -> None:
    """Bad names, bodies, certificates and role assignment fields are 400 with a message."""
    admin = relay_env.token("admin")
    status, body = await relay_env.api("PUT", "/api/v1/resourceGroups/rg1/clusters/bad!name", admin,
                                       _registration())
    assert status == 400 and body["error"]["code"] == "InvalidName"
    status, body = await relay_env.api("PUT", CLUSTER, admin, {"agentPublicKeyCertificate": "nope"})
    assert status == 400 and "agentPublicKeyCertificate" in body["error"]["message"]
    status, body = await relay_env.api("PUT", "/api/v1/roleAssignments/r1", admin, {
        "principalId": "x", "role": "superuser", "scope": "/foo"})
    assert status == 400 and "role" in body["error"]["message"] and "scope" in body["error"]["message"]
    async with relay_env.http.put(relay_env.relay.url + CLUSTER, data=b"{not json",
                                  headers={"Authorization": f"Bearer {admin}"}) as resp:
        assert resp.status == 400


async def test_api_serves_health_ready_and_openapi(relay_env: RelayEnv) -> None:
    """/healthz, /readyz and /openapi.json answer without authentication."""
    for path, expected in (("/healthz", 200), ("/readyz", 200)):
        async with relay_env.http.get(relay_env.relay.url + path) as resp:
            assert resp.status == expected
    async with relay_env.http.get(relay_env.relay.url + "/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/resourceGroups/{rg}/clusters/{name}" in doc["paths"]
    assert "/api/v1/roleAssignments/{id}" in doc["paths"]
