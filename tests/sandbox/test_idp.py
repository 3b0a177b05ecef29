"""The development OIDC issuer over real HTTPS on loopback: discovery, JWKS,
each grant, overage and the member-groups endpoint, key rotation, the CLI."""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from certs import client_ssl_context
from sandbox.idp import SandboxIdp
from tests.support.processes import ChildProcess

DEMO = "demo@contoso.example"
SCOPE = "api://cluster-connect/.default"
SP_ID, SP_SECRET = "2788b2a2-9ad3-4af4-8567-a7214ea67c4a", "ci-secret"
OVERAGE_OID = "0de74a08-180b-45bd-a341-31ff9245995e"


@pytest.fixture
async def http(idp: SandboxIdp) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(idp.ca_pem))) as s:
        yield s


async def _token(http: aiohttp.ClientSession, idp: SandboxIdp, **form: str) -> tuple[int, dict[str, Any]]:
    async with http.post(idp.token_endpoint, data=form) as resp:
        return resp.status, await resp.json()


def _claims(idp: SandboxIdp, token: str) -> dict[str, Any]:
    """Decode with the JWKS the issuer serves (signature checked)."""
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in idp.public_jwks()["keys"] if k["kid"] == kid)
    key = jwt.PyJWK(jwk, algorithm="RS256").key
    return jwt.decode(token, key, algorithms=["RS256"], audience="api://cluster-connect", issuer=idp.issuer)


async def test_idp_serves_entra_shaped_discovery_and_jwks(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """Discovery names the exact issuer (Entra v2 form) and a JWKS of RSA signing keys with kids."""
    assert idp.issuer == f"https://127.0.0.1:{idp.port}/{idp.tenant_id}/v2.0"
    async with http.get(idp.issuer + "/.well-known/openid-configuration") as resp:
        doc = await resp.json()
    assert doc["issuer"] == idp.issuer
    assert doc["token_endpoint"] == idp.token_endpoint
    assert doc["jwks_uri"] == idp.jwks_uri
    async with http.get(doc["jwks_uri"]) as resp:
        keys = (await resp.json())["keys"]
    assert [k["kty"] for k in keys] == ["RSA"] and keys[0]["kid"] == idp.signing_key.kid
    assert idp.request_counts["discovery"] == 1 and idp.request_counts["jwks"] == 1


async def test_idp_refuses_unknown_tenant(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """Another tenant id in the path is a 404, as Entra answers for an unknown tenant."""
    url = idp.issuer.replace(idp.tenant_id, "00000000-0000-0000-0000-000000000000")
    async with http.get(url + "/.well-known/openid-configuration") as resp:
        assert resp.status == 404


async def test_idp_password_grant_issues_user_token(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """A demo user signs in with the password grant and gets an Entra v2 user token and a refresh token."""
    status, body = await _token(
        http, idp, grant_type="password", username=DEMO, password="demo-password", scope=SCOPE
    )
    assert status == 200 and body["token_type"] == "Bearer" and body["refresh_token"]
    c = _claims(idp, body["access_token"])
    assert c["aud"] == "api://cluster-connect" and c["ver"] == "2.0" and c["idtyp"] == "user"
    assert c["tid"] == idp.tenant_id and c["oid"] == "35233192-fc5d-4d88-83c8-36ab5ca99ad9"
    assert c["upn"] == c["preferred_username"] == DEMO and c["name"] == "Demo User"
    assert c["groups"] == ["1babbe50-9daf-4990-acad-d801629bb7a8"]
    assert c["sub"] != c["oid"] and c["azp"] == idp.cli_client_id
    assert c["nbf"] <= c["iat"] < c["exp"] == c["iat"] + 3600


async def test_idp_password_grant_refuses_wrong_password(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """A wrong password is invalid_grant with Entra's AADSTS50126, and no token."""
    status, body = await _token(http, idp, grant_type="password", username=DEMO, password="nope", scope=SCOPE)
    assert status == 400 and body["error"] == "invalid_grant" and body["error_codes"] == [50126]
    assert "access_token" not in body


async def test_idp_client_credentials_issue_app_token(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """A service principal gets an app token (idtyp app, oid of the SP) via post or basic auth."""
    status, body = await _token(
        http, idp, grant_type="client_credentials", client_id=SP_ID, client_secret=SP_SECRET, scope=SCOPE
    )
    assert status == 200
    c = _claims(idp, body["access_token"])
    assert c["idtyp"] == "app" and c["oid"] == c["sub"] == "a1e59bc1-9bda-4925-8724-233e595568d5"
    assert c["azp"] == SP_ID and "upn" not in c
    basic = {"Authorization": "Basic " + base64.b64encode(f"{SP_ID}:{SP_SECRET}".encode()).decode()}
    form = {"grant_type": "client_credentials", "scope": SCOPE}
    async with http.post(idp.token_endpoint, data=form, headers=basic) as r:
        assert r.status == 200


async def test_idp_client_credentials_refuse_wrong_secret(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """A wrong client secret is 401 invalid_client."""
    status, body = await _token(
        http, idp, grant_type="client_credentials", client_id=SP_ID, client_secret="x", scope=SCOPE
    )
    assert status == 401 and body["error"] == "invalid_client"


async def test_idp_refresh_grant_returns_new_token(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """The refresh_token grant returns a new access token for the same user, honouring a short lifetime."""
    _, first = await _token(
        http, idp, grant_type="password", username=DEMO, password="demo-password", scope=SCOPE, lifetime="5"
    )
    assert first["expires_in"] == 5
    status, second = await _token(http, idp, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert status == 200 and second["access_token"] != first["access_token"]
    a, b = _claims(idp, first["access_token"]), _claims(idp, second["access_token"])
    assert a["oid"] == b["oid"] and b["exp"] - b["iat"] == 5
    status, bad = await _token(http, idp, grant_type="refresh_token", refresh_token="rt.unknown")
    assert status == 400 and bad["error"] == "invalid_grant"


async def test_idp_device_code_flow_completes_after_approval(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """Device code: pending until the user signs in on the verification page, then a token."""
    async with http.post(idp.device_authorization_endpoint, data={"scope": SCOPE}) as resp:
        start = await resp.json()
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    status, body = await _token(http, idp, grant_type=grant, device_code=start["device_code"])
    assert status == 400 and body["error"] == "authorization_pending"
    form = {"user_code": start["user_code"], "username": "bob", "password": "bob-password"}
    async with http.post(start["verification_uri"], data=form) as resp:
        assert resp.status == 200
    status, body = await _token(http, idp, grant_type=grant, device_code=start["device_code"])
    assert status == 200 and _claims(idp, body["access_token"])["upn"] == "bob@contoso.example"


async def test_idp_overage_user_gets_claim_sources(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """A user in 250 groups gets _claim_names/_claim_sources instead of groups, pointing at the issuer."""
    status, body = await _token(
        http, idp, grant_type="password", username="overage@contoso.example",
        password="overage-password", scope=SCOPE,
    )
    c = _claims(idp, body["access_token"])
    assert status == 200 and "groups" not in c
    assert c["_claim_names"] == {"groups": "src1"}
    endpoint = c["_claim_sources"]["src1"]["endpoint"]
    assert endpoint == f"{idp.url}/v1.0/users/{OVERAGE_OID}/getMemberObjects"


async def test_idp_member_groups_endpoint_requires_issuer_token(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """getMemberObjects answers an app token with 250 ids; no token is 401, another user's token 403."""
    url = f"{idp.url}/v1.0/users/{OVERAGE_OID}/getMemberObjects"
    async with http.post(url, json={}) as resp:
        assert resp.status == 401
    async with http.post(url, json={}, headers={"Authorization": "Bearer " + idp.mint("bob")}) as resp:
        assert resp.status == 403
    app = idp.mint("cluster-connect-ci")
    async with http.post(url, json={}, headers={"Authorization": "Bearer " + app}) as resp:
        value = (await resp.json())["value"]
    assert len(value) == 250 and "1babbe50-9daf-4990-acad-d801629bb7a8" in value
    forged = idp.mint_raw({"iss": idp.issuer, "idtyp": "app", "exp": 2**31}, key=b"k" * 32, algorithm="HS256")
    async with http.post(url, json={}, headers={"Authorization": "Bearer " + forged}) as resp:
        assert resp.status == 401


async def test_idp_rotation_keeps_old_key_for_grace_then_drops(idp: SandboxIdp) -> None:
    """rotate_keys publishes the new kid next to the old one; drop_old withdraws the old ones."""
    old = idp.signing_key.kid
    new = idp.rotate_keys()
    kids = [k["kid"] for k in idp.public_jwks()["keys"]]
    assert new != old and kids == [old, new]
    assert jwt.get_unverified_header(idp.mint())["kid"] == new
    newest = idp.rotate_keys(drop_old=True)
    assert [k["kid"] for k in idp.public_jwks()["keys"]] == [newest]


async def test_idp_restart_keeps_ca_and_signing_key(tmp_path: Path) -> None:
    """A restarted issuer on the same state dir reuses its CA and signing key."""
    first = SandboxIdp(tmp_path)
    await first.start()
    ca, kid = first.ca_pem, first.signing_key.kid
    await first.stop()
    second = SandboxIdp(tmp_path)
    await second.start()
    try:
        assert second.ca_pem == ca and second.signing_key.kid == kid
    finally:
        await second.stop()


async def test_idp_mint_overrides_and_removes_claims(idp: SandboxIdp) -> None:
    """mint() takes a user by short name, replaces claims, and None removes one."""
    c = _claims(idp, idp.mint("demo", lifetime=60, name="Other", groups=None))
    assert c["name"] == "Other" and "groups" not in c and c["exp"] - c["iat"] == 60


async def test_idp_cli_writes_ready_file_and_exits_on_sigterm(tmp_path: Path) -> None:
    """python -m sandbox.idp writes the ready JSON, serves tokens, rotates on SIGHUP, exits 0 on SIGTERM."""
    ready = tmp_path / "ready.json"
    proc = await ChildProcess.start_async(
        [sys.executable, "-m", "sandbox.idp", "--port", "0", "--state-dir", str(tmp_path / "s"),
         "--ready-file", str(ready)], ready_file=ready, name="sandbox.idp")
    try:
        info = proc.ready_info
        assert info["issuer"].endswith(f"/{info['tenant_id']}/v2.0") and Path(info["ca_file"]).exists()
        ssl = client_ssl_context(info["ca_pem"].encode())
        async with aiohttp.ClientSession() as s:
            form = {"grant_type": "password", "username": DEMO, "password": "demo-password", "scope": SCOPE}
            async with s.post(info["token_endpoint"], data=form, ssl=ssl) as resp:
                assert resp.status == 200
            proc.send_signal(signal.SIGHUP)  # rotate: the JWKS then holds two keys
            for _ in range(100):
                async with s.get(info["jwks_uri"], ssl=ssl) as resp:
                    if len((await resp.json())["keys"]) == 2:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("SIGHUP did not rotate the signing key")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0, proc.output()
    finally:
        proc.kill()


async def test_idp_cli_reports_bad_users_file_in_one_line(tmp_path: Path) -> None:
    """An invalid users file is one line on stderr and exit 2, no traceback."""
    bad = tmp_path / "users.yaml"
    bad.write_text("tenant_id: not-a-uuid\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox.idp", "--state-dir", str(tmp_path), "--users", str(bad),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "tenant_id" in lines[0]
    assert "Traceback" not in err.decode()


async def test_idp_cli_reports_port_in_use_in_one_line(idp: SandboxIdp, tmp_path: Path) -> None:
    """A port already taken is one line on stderr naming the fix, exit 1, no traceback."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox.idp", "--state-dir", str(tmp_path), "--port", str(idp.port),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    lines = [ln for ln in err.decode().strip().splitlines() if "sandbox.idp:" in ln]
    assert proc.returncode == 1 and len(lines) == 1 and "--port" in lines[0]
    assert "Traceback" not in err.decode()


async def test_idp_approve_device_code_programmatically(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """approve_device_code(user_code, user) completes a device sign-in without the web form."""
    async with http.post(idp.device_authorization_endpoint, data={"scope": SCOPE, "lifetime": "60"}) as resp:
        start = await resp.json()
    assert idp.approve_device_code(start["user_code"], "alice")
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    status, body = await _token(http, idp, grant_type=grant, device_code=start["device_code"])
    c = _claims(idp, body["access_token"])
    assert status == 200 and c["upn"] == "alice@contoso.example" and c["exp"] - c["iat"] == 60
    status, again = await _token(http, idp, grant_type=grant, device_code=start["device_code"])
    assert status == 400 and again["error"] == "expired_token"  # a device code is used once


async def test_idp_custom_users_file_with_per_user_lifetime(tmp_path: Path) -> None:
    """A users file of our own replaces the demo directory; token_lifetime applies per user."""
    users = tmp_path / "users.yaml"
    users.write_text(
        "tenant_id: 11111111-2222-3333-4444-555555555555\n"
        "users:\n"
        "  - {username: carol@example.org, password: pw, oid: 66666666-7777-8888-9999-000000000000,"
        " token_lifetime: 5}\n"
        "public_clients:\n"
        "  - {name: cli, client_id: 12345678-1234-1234-1234-123456789012}\n"
    )
    server = SandboxIdp(tmp_path / "s", users_file=users)
    await server.start()
    try:
        assert server.tenant_id == "11111111-2222-3333-4444-555555555555"
        ssl = client_ssl_context(server.ca_pem)
        form = {"grant_type": "password", "username": "carol", "password": "pw", "scope": SCOPE}
        async with aiohttp.ClientSession() as s, s.post(server.token_endpoint, data=form, ssl=ssl) as resp:
            body = await resp.json()
        c = _claims(server, body["access_token"])
        assert body["expires_in"] == 5 and c["exp"] - c["iat"] == 5 and c["tid"] == server.tenant_id
        assert c["azp"] == "12345678-1234-1234-1234-123456789012"
    finally:
        await server.stop()


async def test_idp_binds_pop_token_to_req_cnf(idp: SandboxIdp, http: aiohttp.ClientSession) -> None:
    """token_type=pop with req_cnf gets an access token with cnf.kid = the thumbprint and
    token_type pop; without them a plain bearer token (no cnf); req_cnf alone is refused."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from client.pop import PopKey

    key = PopKey(ec.generate_private_key(ec.SECP256R1()))
    base = {"grant_type": "password", "username": DEMO, "password": "demo-password", "scope": SCOPE}
    status, body = await _token(http, idp, **base, token_type="pop", req_cnf=key.req_cnf())
    assert status == 200 and body["token_type"] == "pop"
    assert _claims(idp, body["access_token"])["cnf"] == {"kid": key.key_id}
    status, body = await _token(http, idp, grant_type="refresh_token", refresh_token=body["refresh_token"],
                                token_type="pop", req_cnf=key.req_cnf())
    assert status == 200 and _claims(idp, body["access_token"])["cnf"] == {"kid": key.key_id}
    status, body = await _token(http, idp, **base)
    assert status == 200 and body["token_type"] == "Bearer" and "cnf" not in _claims(idp, body["access_token"])
    status, body = await _token(http, idp, **base, req_cnf=key.req_cnf())
    assert status == 400 and body["error"] == "invalid_request"
    status, body = await _token(http, idp, **base, token_type="pop", req_cnf="bm90LWpzb24")
    assert status == 400 and body["error"] == "invalid_request"
