"""Identity attack suite, end to end (issue 4, "Done when").

Everything runs through the real path: kubectl (or a hand-written HTTP/1.1
request) -> arc-proxy -> relay -> agent -> kube-aad-proxy -> sandbox API
server with real RBAC. Each case asserts the refusal AND, through the API
server's own audit trail (``GET /debug/audit``), that nothing was executed
there: no request at all for refused tokens; no request as the spoofed
identity for spoofed ``Impersonate-*`` headers. Bad tokens are also shown to
the relay, which must refuse them at ``/client/v1/connect`` (401).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from certs import generate_key_pair
from client.auth import TokenSource
from client.relay_client import RelayApi
from demo import DemoEnvironment
from identity import sign_agent_assertion
from tests.e2e.identity_support import (
    Forge,
    audit,
    audit_since,
    demo,
    get_head,
    raw_request,
    relay_status,
    token_kubeconfig,
    whoami_head,
)
from tests.support.e2e import Kubectl, Proxy, start_proxy
from tests.support.kubectl import require_kubectl

pytestmark = pytest.mark.e2e

SPOOF_USER = "system:admin"
SPOOF_GROUP = "system:masters"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnvironment]:
    """One demo for the whole attack suite."""
    with demo(tmp_path_factory.mktemp("identity-attacks")) as e:
        yield e


@pytest.fixture(scope="module")
def forge(env: DemoEnvironment) -> Forge:
    """Token forge sharing the running issuer's keys."""
    return Forge(env)


@pytest.fixture(scope="module")
def proxy(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The demo user's arc-proxy: a legitimate relay session that carries the
    attacker's kubectl traffic (the relay cannot see inside the TLS)."""
    kc = tmp_path_factory.mktemp("kube-attacks") / "config"
    p = start_proxy(env.client_config_path, kc, "-v")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def kubectl_bin() -> str:
    """The kubectl binary matching the sandbox's version."""
    return require_kubectl("1.33")


def _mark(env: DemoEnvironment) -> int:
    return len(audit(env))


def _assert_nothing_reached(env: DemoEnvironment, mark: int) -> None:
    reached = audit_since(env, mark)
    assert reached == [], f"requests reached the API server: {reached}"


def _refused_everywhere(env: DemoEnvironment, proxy: Proxy, token: str, status: int = 401) -> str:
    """The token is refused by kube-aad-proxy (through the real path) and by
    the relay, and the API server saw nothing. Returns the proxy's message."""
    mark = _mark(env)
    resp = raw_request(proxy.kubeconfig, whoami_head(token))
    assert resp.status == status, (resp.status, resp.body[:300])
    message = str(resp.json().get("message", ""))
    assert token not in message and token not in resp.head
    assert relay_status(env, "/client/v1/connect", token) == 401
    assert relay_status(env, "/api/v1/clusters", token) == 401
    _assert_nothing_reached(env, mark)
    return message


def test_attack_alg_none_is_refused(env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """An unsigned token (``alg: none``) with otherwise perfect claims."""
    token = forge.raw(forge.claims("demo"), algorithm="none")
    assert "algorithm not allowed" in _refused_everywhere(env, proxy, token)


def test_attack_hs256_signed_with_issuer_public_key_is_refused(env: DemoEnvironment, forge: Forge,
                                                               proxy: Proxy) -> None:
    """The classic key-confusion forgery: HMAC keyed with the issuer's public key."""
    token = forge.raw(forge.claims("demo"), algorithm="HS256", key=forge.public_key_pem,
                      headers={"kid": forge.minter.keys.current.kid})
    assert "algorithm not allowed" in _refused_everywhere(env, proxy, token)


def test_attack_wrong_issuer_is_refused(env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """A token for our audience from an issuer nobody trusts (signed with the
    real key, so only the ``iss`` check can stop it)."""
    token = forge.token("demo", iss="https://evil.example/9dc190c4/v2.0")
    assert "untrusted issuer" in _refused_everywhere(env, proxy, token)


def test_attack_wrong_audience_is_refused(env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """A genuine token of the trusted issuer, minted for another API."""
    token = forge.token("demo", aud="api://some-other-api")
    assert "wrong audience" in _refused_everywhere(env, proxy, token)


def test_attack_expired_token_is_refused(env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """Expired well beyond the clock skew."""
    now = int(time.time())
    token = forge.token("demo", iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    assert "token expired" in _refused_everywhere(env, proxy, token)


def test_attack_nbf_in_the_future_is_refused(env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """Not valid before an hour from now."""
    now = int(time.time())
    token = forge.token("demo", nbf=now + 3600, exp=now + 7200)
    assert "not yet valid" in _refused_everywhere(env, proxy, token)


def test_attack_unknown_kid_is_refused(env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """Signed by a key the issuer never published, under a made-up kid."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = forge.raw(forge.claims("demo"), key=key, headers={"kid": "attacker-" + uuid.uuid4().hex})
    assert "unknown signing key" in _refused_everywhere(env, proxy, token)


def test_attack_tampered_payload_is_refused(env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """A genuine signature over a payload edited afterwards (groups added)."""
    import base64

    header, _payload, signature = forge.token("bob").split(".")
    claims = forge.claims("bob", groups=[forge.group_id("cluster-admins"), SPOOF_GROUP])
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    token = f"{header}.{payload}.{signature}"
    assert "bad signature" in _refused_everywhere(env, proxy, token)


def test_attack_token_of_another_tenant_is_refused(env: DemoEnvironment, forge: Forge,
                                                   proxy: Proxy) -> None:
    """Genuinely signed, right issuer and audience, but a tenant outside the
    ``tenant_ids`` allow-list (relay and proxy both configure it)."""
    token = forge.token("demo", tid=str(uuid.uuid4()))
    assert "tenant not allowed" in _refused_everywhere(env, proxy, token)
    # And the other tenant's own issuer URL is simply not trusted.
    other = forge.token("demo", iss=forge.issuer.replace(forge.tenant_id, str(uuid.uuid4())))
    assert "untrusted issuer" in _refused_everywhere(env, proxy, other)


def _whoami(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    out = kubectl.text("auth", "whoami", "-o", "json", *args)
    return dict(json.loads(out)["status"]["userInfo"])


SPOOF_HEADERS = (
    f"Impersonate-User: {SPOOF_USER}",
    f"iMPERSONATE-gROUP: {SPOOF_GROUP}",
    "impersonate-uid: 0000-spoofed-uid",
    "IMPERSONATE-EXTRA-scopes: everything",
    "Impersonate-Extra-Oid: 00000000-0000-0000-0000-000000000000",
    "impersonate-extra-tid: spoofed-tenant",
)


def _spoofed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["user"] in (SPOOF_USER, "spoofed") or "spoof" in r["user"]]


def test_attack_spoofed_impersonation_with_valid_oidc_token_is_stripped(
        env: DemoEnvironment, forge: Forge, proxy: Proxy, kubectl_bin: str, tmp_path: Path) -> None:
    """A valid OIDC token plus ``Impersonate-User/-Group/-Uid/-Extra-*`` (kubectl
    --as/--as-group/--as-uid, and mixed-case by hand): the request runs as the
    token's user only; no request ever runs as the spoofed identity."""
    bob = forge.oid("bob")
    token = forge.token("bob")
    kubectl = Kubectl(kubectl_bin, token_kubeconfig(proxy.kubeconfig, token, tmp_path / "kc"))
    mark = _mark(env)
    info = _whoami(kubectl, "--as", SPOOF_USER, "--as-group", SPOOF_GROUP, "--as-uid", "spoofed-uid")
    assert info["username"] == bob
    assert SPOOF_GROUP not in info.get("groups", [])
    assert info.get("uid", "") != "spoofed-uid"
    resp = raw_request(proxy.kubeconfig, whoami_head(token, *SPOOF_HEADERS))
    assert resp.status == 201, resp.body[:300]
    user = resp.json()["status"]["userInfo"]
    assert user["username"] == bob and SPOOF_GROUP not in user.get("groups", [])
    assert user.get("extra", {}).get("oid") == [bob]
    assert user.get("extra", {}).get("tid") == [forge.tenant_id]
    assert "scopes" not in user.get("extra", {})
    records = audit_since(env, mark)
    assert records and all(r["user"] == bob and r["impersonatedBy"] for r in records), records
    assert _spoofed(records) == []
    # Bob cannot read secrets, spoofed headers or not: refused by RBAC as bob.
    resp = raw_request(proxy.kubeconfig, get_head("/api/v1/namespaces/kube-system/secrets",
                                                  f"Authorization: Bearer {token}", *SPOOF_HEADERS))
    assert resp.status == 403 and bob in resp.json()["message"]


def test_attack_spoofed_impersonation_with_service_account_token_is_stripped(
        env: DemoEnvironment, proxy: Proxy, kubectl_bin: str, tmp_path: Path) -> None:
    """A service-account token (pass-through path) plus spoofed ``Impersonate-*``:
    headers are removed, the API server sees the service account itself and
    never an impersonation request."""
    admin = env.sandbox_admin()
    admin.create("/api/v1/namespaces/default/serviceaccounts",
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "attacker"}})
    sa_token = admin.call("POST", "/api/v1/namespaces/default/serviceaccounts/attacker/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": 3600}}, ok_conflict=False)["status"]["token"]
    sa = "system:serviceaccount:default:attacker"
    kubectl = Kubectl(kubectl_bin, token_kubeconfig(proxy.kubeconfig, sa_token, tmp_path / "kc"))
    mark = _mark(env)
    info = _whoami(kubectl, "--as", SPOOF_USER, "--as-group", SPOOF_GROUP, "--as-uid", "spoofed-uid")
    assert info["username"] == sa and SPOOF_GROUP not in info.get("groups", [])
    resp = raw_request(proxy.kubeconfig, whoami_head(sa_token, *SPOOF_HEADERS))
    assert resp.status == 201 and resp.json()["status"]["userInfo"]["username"] == sa
    records = audit_since(env, mark)
    assert records and all(r["user"] == sa and not r["impersonatedBy"] for r in records), records


def test_attack_two_authorization_headers_are_refused(env: DemoEnvironment, forge: Forge,
                                                      proxy: Proxy) -> None:
    """Two ``Authorization`` headers (valid OIDC + admin-looking SA token, both
    orders): 400 at kube-aad-proxy, nothing forwarded."""
    good = forge.token("bob")
    for first, second in ((good, "someone-elses-token"), ("someone-elses-token", good)):
        mark = _mark(env)
        resp = raw_request(proxy.kubeconfig, get_head(
            "/api/v1/namespaces", f"Authorization: Bearer {first}", f"authorization: Bearer {second}"))
        assert resp.status == 400, resp.body[:300]
        assert "more than one Authorization header" in resp.json()["message"]
        _assert_nothing_reached(env, mark)


async def _admin_api(env: DemoEnvironment, method: str, *args: Any) -> Any:
    cfg = env.admin_config()
    async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
        return await getattr(api, method)(*args)


def _register(env: DemoEnvironment, name: str) -> bytes:
    """Register ``default/NAME`` with a fresh agent key; returns its private key."""
    keys = generate_key_pair(f"default/{name}")
    asyncio.run(_admin_api(env, "put_cluster", "default", name, {
        "agentPublicKeyCertificate": keys.certificate_pem.decode(), "location": "test"}))
    return keys.private_key_pem


async def _client_open(env: DemoEnvironment, token: str, target: bytes) -> tuple[str, str]:
    """Open a relay client session with ``token`` and one stream to ``target``;
    returns ("accepted", "") or (code name, reason)."""
    import ssl

    import tunnel

    ctx = ssl.create_default_context(cafile=str(env.dir / "relay" / "ca.crt"))
    cfg = tunnel.TunnelConfig()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(env.relay_url.replace("https://", "wss://") + "/client/v1/connect",
                                   headers={"Authorization": f"Bearer {token}"}, ssl=ctx,
                                   **tunnel.ws_connect_kwargs(cfg))
        session = tunnel.TunnelSession(ws, is_client=True, config=cfg, name="attacker")
        runner = asyncio.create_task(session.run())
        try:
            stream = await session.open_stream(target, timeout=15)
        except tunnel.StreamRefused as err:
            return getattr(err.code, "name", str(err.code)), err.reason
        else:
            stream.reset(tunnel.ErrorCode.CANCEL, "test")
            return "accepted", ""
        finally:
            await session.close()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


def test_attack_user_with_role_on_cluster_a_cannot_open_cluster_b(env: DemoEnvironment, forge: Forge) -> None:
    """The demo user holds cluster-user on default/demo only. On one and the
    same authenticated session a stream to default/demo is accepted and a
    stream to default/other is refused FORBIDDEN, naming role and scope."""
    _register(env, "other")
    token = forge.token("demo")
    mark = _mark(env)
    assert asyncio.run(_client_open(env, token, b"default/demo")) == ("accepted", "")
    code, reason = asyncio.run(_client_open(env, token, b"default/other"))
    assert code == "FORBIDDEN"
    assert "cluster-user" in reason and "/resourceGroups/default/clusters/other" in reason
    # The accepted stream to A was reset unused: no API traffic at all.
    _assert_nothing_reached(env, mark)


def _agent_dial(env: DemoEnvironment, assertion: str) -> int:
    """Dial /agent/v1/connect as a websocket; returns 101 or the refusal status."""
    import ssl

    import tunnel

    async def go() -> int:
        ctx = ssl.create_default_context(cafile=str(env.dir / "relay" / "ca.crt"))
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(env.relay_url + "/agent/v1/connect", ssl=ctx,
                                           headers={"Authorization": f"Bearer {assertion}"},
                                           **tunnel.ws_connect_kwargs(tunnel.TunnelConfig()))
            except aiohttp.WSServerHandshakeError as err:
                return int(err.status)
            await ws.close()
            return 101
    return asyncio.run(go())


def _agent_audience(env: DemoEnvironment) -> str:
    return env.relay_url + "/agent/v1/connect"


def test_attack_agent_key_of_cluster_a_registering_as_cluster_b(env: DemoEnvironment) -> None:
    """The demo cluster's agent key signs an assertion claiming another
    registered cluster: refused (401), and the victim stays as it was."""
    _register(env, "victim")
    key_a = (env.dir / "agent" / "agent.key").read_bytes()
    forged = sign_agent_assertion(key_a, "default/victim", _agent_audience(env))
    assert _agent_dial(env, forged) == 401
    status = asyncio.run(_admin_api(env, "get_cluster", "default", "victim"))["connectivityStatus"]
    assert status != "Connected"
    # The same key claiming an unregistered name is refused as well.
    assert _agent_dial(env, sign_agent_assertion(key_a, "default/ghost", _agent_audience(env))) == 401


def test_attack_replayed_agent_assertion_is_refused(env: DemoEnvironment) -> None:
    """An assertion accepted once is refused the second time (jti replay cache)."""
    key = _register(env, "replay")
    assertion = sign_agent_assertion(key, "default/replay", _agent_audience(env))
    assert _agent_dial(env, assertion) == 101
    assert _agent_dial(env, assertion) == 401


def test_attack_overage_user_whose_groups_cannot_be_resolved_is_refused(
        env: DemoEnvironment, forge: Forge, proxy: Proxy) -> None:
    """A genuine overage token (more than 200 groups) of a user the group
    source does not know (deleted since the token was issued), even with a
    ``_claim_sources`` URL naming a real user: groups are looked up for the
    token's validated ``oid`` only, the lookup fails, and the request is
    refused (403 at the proxy, 401 at the relay), never run with "no groups"."""
    claims = forge.claims("overage", oid=str(uuid.uuid4()))
    assert "_claim_names" in claims and "groups" not in claims
    token = forge.raw(claims)  # _claim_sources still names the real overage user
    assert "group membership could not be resolved" in _refused_everywhere(env, proxy, token, 403)


def test_attack_suite_left_no_token_in_any_log(env: DemoEnvironment, proxy: Proxy) -> None:
    """After every attack above: no process log (API server, issuer, relay,
    agent with kube-aad-proxy's audit lines) contains a JWT; the audit lines
    are there, one per request, with principal, cluster, verb, path, status."""
    logs = {p.name: p.read_text(errors="replace") for p in env.logs.glob("*.log")}
    assert {"relay.log", "agent.log"} <= set(logs)
    for name, text in logs.items():
        assert "eyJ" not in text, f"{name} contains a JWT"
    audit_lines = [ln for ln in logs["agent.log"].splitlines() if "agent.audit" in ln]
    assert any("cluster=default/demo" in ln and "verb=POST" in ln and "status=401" in ln
               and "path=/apis/authentication.k8s.io/v1/selfsubjectreviews" in ln and "duration_ms=" in ln
               for ln in audit_lines), audit_lines[-5:]
