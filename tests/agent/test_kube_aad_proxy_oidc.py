"""kube-aad-proxy's OIDC path: real identity.TokenValidator, real SandboxIdp
tokens, a recording TLS upstream standing in for the API server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from agent import KubeAadProxy, KubeAadProxyConfig
from identity import HttpGroupResolver, TokenValidator, TrustedIssuer
from sandbox.idp import DEFAULT_AUDIENCE, SandboxIdp
from tests.support.kube_aad_proxy import RecordingUpstream, connect, get, read_response, status_of
from tests.support.pki import Pki

pytestmark = pytest.mark.timeout(60)

AGENT_TOKEN = "agent-sa-token"
DEMO_OID = "35233192-fc5d-4d88-83c8-36ab5ca99ad9"
OVERAGE_USER = "overage@contoso.example"


async def start_proxy(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, *, resolver: bool = False, impersonate_with: str = "oid"
) -> tuple[KubeAadProxy, TokenValidator]:
    group_resolver = None
    if resolver:
        app_token = idp.mint("cluster-connect-ci")
        group_resolver = HttpGroupResolver(app_token, allowed_hosts=["127.0.0.1"])
    validator = TokenValidator(
        [TrustedIssuer(issuer=idp.issuer, audiences=[DEFAULT_AUDIENCE], ca_pem=idp.ca_pem)],
        group_resolver=group_resolver,
    )
    proxy = KubeAadProxy(KubeAadProxyConfig(
        upstream_url=upstream.url, upstream_ca_pem=pki.ca.certificate_pem, serving_cert=pki.proxy_cert,
        upstream_token=AGENT_TOKEN, validator=validator, impersonate_with=impersonate_with,  # type: ignore[arg-type]
    ))
    await proxy.start()
    return proxy, validator


@pytest.fixture
async def oidc_proxy(pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp) -> AsyncIterator[KubeAadProxy]:
    proxy, validator = await start_proxy(pki, upstream, idp)
    yield proxy
    await proxy.stop()
    await validator.close()


async def request(pki: Pki, proxy: KubeAadProxy, *headers: str) -> tuple[int, dict[str, object] | None]:
    r, w = await connect(pki, proxy.port)
    w.write(get("/api/v1/namespaces/default/pods", *headers))
    resp = await read_response(r)
    w.close()
    return resp.status, (status_of(resp) if resp.status >= 400 else None)


async def test_proxy_impersonates_valid_oidc_user(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, oidc_proxy: KubeAadProxy
) -> None:
    """A valid token becomes the agent's token plus Impersonate-User/Group/Extra set by us,
    and spoofed Impersonate-* headers sent alongside it are gone."""
    token = idp.mint("demo")
    status, _ = await request(
        pki, oidc_proxy, f"Authorization: Bearer {token}", "Impersonate-User: system:admin",
        "impersonate-group: system:masters", "Impersonate-Uid: 0", "IMPERSONATE-EXTRA-oid: evil",
    )
    assert status == 200
    got = upstream.received[0]
    assert got.values("authorization") == [f"Bearer {AGENT_TOKEN}"]
    assert got.values("impersonate-user") == [DEMO_OID]
    groups = got.values("impersonate-group")
    assert groups and "system:masters" not in groups
    assert got.values("impersonate-extra-oid") == [DEMO_OID]
    assert got.values("impersonate-extra-tid") == [idp.tenant_id]
    assert got.values("impersonate-uid") == []
    assert token.encode() not in got.raw_head


async def test_proxy_impersonates_upn_when_configured(pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp) -> None:
    """With impersonate_with="upn" the user name is the token's upn."""
    proxy, validator = await start_proxy(pki, upstream, idp, impersonate_with="upn")
    try:
        status, _ = await request(pki, proxy, f"Authorization: Bearer {idp.mint('demo')}")
        assert status == 200
        assert upstream.received[0].values("impersonate-user") == ["demo@contoso.example"]
    finally:
        await proxy.stop()
        await validator.close()


@pytest.mark.parametrize(
    "case",
    ["expired", "wrong_audience", "tampered", "alg_none", "unknown_kid", "future_nbf"],
)
async def test_proxy_refuses_invalid_token_from_trusted_issuer(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, oidc_proxy: KubeAadProxy, case: str
) -> None:
    """A bad token that claims a trusted issuer gets 401 and nothing reaches the upstream."""
    now = int(time.time())
    if case == "expired":
        token = idp.mint("demo", exp=now - 3600, iat=now - 7200, nbf=now - 7200)
    elif case == "wrong_audience":
        token = idp.mint("demo", audience="api://somebody-else")
    elif case == "tampered":
        h, p, s = idp.mint("demo").split(".")
        other = idp.mint("admin").split(".")[1]
        token = f"{h}.{other}.{s}" if other != p else f"{h}.{p}x.{s}"
    elif case == "alg_none":
        claims = {"iss": idp.issuer, "aud": DEFAULT_AUDIENCE, "oid": DEMO_OID, "exp": now + 600, "iat": now}
        token = idp.mint_raw(claims, algorithm="none", key=None)
    elif case == "unknown_kid":
        token = idp.mint("demo", headers={"kid": "no-such-kid"})
    else:
        token = idp.mint("demo", nbf=now + 3600)
    status, doc = await request(pki, oidc_proxy, f"Authorization: Bearer {token}")
    assert status == 401 and doc is not None and doc["reason"] == "Unauthorized"
    assert token not in str(doc["message"])
    assert upstream.received == []


async def test_proxy_passes_through_service_account_token(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, oidc_proxy: KubeAadProxy
) -> None:
    """A JWT from an issuer we do not trust (a service-account token) goes on untouched."""
    sa = idp.mint_raw({"iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:x:y"})
    req = get("/api/v1/namespaces/default/pods", f"Authorization: Bearer {sa}")
    r, w = await connect(pki, oidc_proxy.port)
    w.write(req)
    assert (await read_response(r)).status == 200
    assert upstream.received[0].raw_head == req
    w.close()


async def test_proxy_refuses_unresolved_group_overage(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, oidc_proxy: KubeAadProxy
) -> None:
    """An overage token without a group source is refused with 403 (fail closed)."""
    status, doc = await request(pki, oidc_proxy, f"Authorization: Bearer {idp.mint(OVERAGE_USER)}")
    assert status == 403 and doc is not None and doc["reason"] == "Forbidden"
    assert upstream.received == []


async def test_proxy_forwards_resolved_overage_groups(pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp) -> None:
    """With a group source, an overage user's 250 groups become 250 Impersonate-Group headers."""
    proxy, validator = await start_proxy(pki, upstream, idp, resolver=True)
    try:
        status, _ = await request(pki, proxy, f"Authorization: Bearer {idp.mint(OVERAGE_USER)}")
        assert status == 200
        assert len(upstream.received[0].values("impersonate-group")) == 250
    finally:
        await proxy.stop()
        await validator.close()


async def test_proxy_verifies_token_signature_once(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, oidc_proxy: KubeAadProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten requests (kept-alive and on new connections) with one token: one validation;
    the audit line names the principal and never the token."""
    caplog.set_level(logging.INFO, logger="agent.audit")
    token = idp.mint("demo")
    r, w = await connect(pki, oidc_proxy.port)
    for _ in range(5):
        w.write(get("/api", f"Authorization: Bearer {token}"))
        assert (await read_response(r)).status == 200
    w.close()
    for _ in range(5):
        assert (await request(pki, oidc_proxy, f"Authorization: Bearer {token}"))[0] == 200
    assert oidc_proxy.gate is not None and oidc_proxy.gate.validations == 1
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "agent.audit"]
    assert len(lines) == 10 and all(f"principal={DEMO_OID} " in line for line in lines)
    assert token not in caplog.text
    await asyncio.sleep(0)


async def test_proxy_keeps_validated_tokens_in_the_validators_cache_only(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp,
) -> None:
    """One cache per validated token: the proxy decides from the validator's own
    cache, so clearing that cache (a configuration change) makes the next
    request with the same token verify its signature again."""
    proxy, validator = await start_proxy(pki, upstream, idp)
    try:
        token = idp.mint("demo")
        for _ in range(2):
            assert (await request(pki, proxy, f"Authorization: Bearer {token}"))[0] == 200
        assert proxy.gate is not None
        assert (validator.signature_verifications, proxy.gate.validations) == (1, 1)
        validator.clear_cache()
        assert (await request(pki, proxy, f"Authorization: Bearer {token}"))[0] == 200
        assert (validator.signature_verifications, proxy.gate.validations) == (2, 2)
    finally:
        await proxy.stop()
        await validator.close()


async def test_proxy_keeps_order_across_pipelined_oidc_and_passthrough(
    pki: Pki, upstream: RecordingUpstream, idp: SandboxIdp, oidc_proxy: KubeAadProxy
) -> None:
    """Pipelined requests mixing a not-yet-validated OIDC token and an SA token keep their
    order and each gets its own credentials."""
    token = idp.mint("demo")
    r, w = await connect(pki, oidc_proxy.port)
    w.write(
        get("/1", f"Authorization: Bearer {token}") + get("/2", "Authorization: Bearer sa-token")
        + get("/3", f"Authorization: Bearer {token}") + get("/4")
    )
    for i in range(1, 5):
        assert (await read_response(r)).body.endswith(b'"/%d"}' % i)
    w.close()
    got = upstream.received
    assert [x.path for x in got] == ["/1", "/2", "/3", "/4"]
    assert got[0].values("impersonate-user") == [DEMO_OID] == got[2].values("impersonate-user")
    assert got[1].values("authorization") == ["Bearer sa-token"] and got[1].values("impersonate-user") == []
    assert got[3].values("authorization") == [] and got[3].values("impersonate-user") == []
