"""Entra v1 and v2 access-token shapes from the real sandbox issuer: both
validate to the same Principal fields, kube-aad-proxy impersonates the same
user for both, and each is accepted only by a config for its own issuer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from agent.kube_aad_proxy.heads import parse_request_head
from agent.kube_aad_proxy.oidc import OidcGate, audiences_of
from agent.kube_aad_proxy.policy import Forward, HeaderPolicy, Validate
from certs import client_ssl_context
from identity import TokenInvalid, TokenValidator, TrustedIssuer
from sandbox.idp import SandboxIdp

AUD = "api://cluster-connect"
APP = "cluster-connect-ci"
CI_CLIENT_ID, CI_SECRET = "2788b2a2-9ad3-4af4-8567-a7214ea67c4a", "ci-secret"


def _v2(idp: SandboxIdp) -> TrustedIssuer:
    return TrustedIssuer(issuer=idp.issuer, audiences=[AUD], ca_pem=idp.ca_pem, tenant_ids=[idp.tenant_id])


def _v1(idp: SandboxIdp) -> TrustedIssuer:
    return TrustedIssuer(issuer=idp.v1_issuer, audiences=[AUD], ca_pem=idp.ca_pem,
                         tenant_ids=[idp.tenant_id], discovery_url=idp.v1_discovery_url)


@pytest.fixture
async def both(idp: SandboxIdp) -> AsyncIterator[TokenValidator]:
    v = TokenValidator([_v2(idp), _v1(idp)])
    yield v
    await v.close()


def _fields(p: object) -> tuple[object, ...]:
    return tuple(getattr(p, n) for n in ("oid", "upn", "tid", "groups", "app_id", "is_app"))


async def test_v1_and_v2_user_tokens_give_the_same_principal(idp: SandboxIdp, both: TokenValidator) -> None:
    v2 = idp.mint("demo")
    v1 = idp.mint("demo", version="1.0")
    p2, p1 = await both.validate(v2), await both.validate(v1)
    assert p1.claims["ver"] == "1.0" and p1.claims["iss"] == f"https://sts.windows.net/{idp.tenant_id}/"
    assert "azp" not in p1.claims and "preferred_username" not in p1.claims
    assert p1.claims["unique_name"] == p1.claims["upn"] == "demo@contoso.example"
    assert p2.claims["ver"] == "2.0" and "appid" not in p2.claims
    assert _fields(p1) == _fields(p2)
    assert p1.upn == "demo@contoso.example" and p1.app_id == idp.cli_client_id and not p1.is_app
    assert (p1.issuer, p2.issuer) == (idp.v1_issuer, idp.issuer)


async def test_v1_user_name_falls_back_to_unique_name(idp: SandboxIdp, both: TokenValidator) -> None:
    p = await both.validate(idp.mint("demo", version="1.0", upn=None))
    assert p.upn == "demo@contoso.example"


async def test_v1_and_v2_app_tokens_give_the_same_principal(idp: SandboxIdp, both: TokenValidator) -> None:
    p2 = await both.validate(idp.mint(APP))
    p1 = await both.validate(idp.mint(APP, version="1.0"))
    assert p1.claims["appid"] == p2.claims["azp"] and p1.claims["appidacr"] == "1"
    assert _fields(p1) == _fields(p2)
    assert p1.is_app and p1.upn is None and p1.app_id == p2.claims["azp"]


async def test_each_shape_is_accepted_only_by_its_own_issuer_config(idp: SandboxIdp) -> None:
    v2_only, v1_only = TokenValidator([_v2(idp)]), TokenValidator([_v1(idp)])
    try:
        with pytest.raises(TokenInvalid, match="untrusted issuer"):
            await v2_only.validate(idp.mint("demo", version="1.0"))
        with pytest.raises(TokenInvalid, match="untrusted issuer"):
            await v1_only.validate(idp.mint("demo"))
        assert (await v1_only.validate(idp.mint("demo", version="1.0"))).oid == \
            (await v2_only.validate(idp.mint("demo"))).oid
    finally:
        await v2_only.close()
        await v1_only.close()


async def test_v1_token_tenant_is_checked(idp: SandboxIdp, both: TokenValidator) -> None:
    with pytest.raises(TokenInvalid, match="tenant not allowed"):
        await both.validate(idp.mint("demo", version="1.0", tid="00000000-0000-0000-0000-000000000000"))


@pytest.mark.parametrize("impersonate_with", ["oid", "upn"])
async def test_kube_aad_proxy_impersonates_the_same_user_for_both_shapes(
    idp: SandboxIdp, both: TokenValidator, impersonate_with: str
) -> None:
    gate = OidcGate(both, frozenset({idp.issuer, idp.v1_issuer}), audiences_of(both))
    policy = HeaderPolicy(gate, "agent-token", impersonate_with)
    seen = []
    for version in ("2.0", "1.0"):
        raw = (f"GET /api/v1/namespaces HTTP/1.1\r\nHost: k\r\n"
               f"Authorization: Bearer {idp.mint('demo', version=version)}\r\n\r\n").encode()
        head = parse_request_head(raw)
        pending = policy.decide(head)
        assert isinstance(pending, Validate)
        decision = await policy.finish(head, pending)
        assert isinstance(decision, Forward), decision
        user = [line for line in decision.head.split(b"\r\n") if line.lower().startswith(b"impersonate-user:")]
        seen.append(user)
    assert seen[0] == seen[1] and len(seen[0]) == 1
    expected = "demo@contoso.example" if impersonate_with == "upn" else (await both.validate(idp.mint("demo"))).oid
    assert seen[0][0].split(b":", 1)[1].strip().decode().endswith(expected)


async def _token(idp: SandboxIdp, path: str, **form: str) -> str:
    async with aiohttp.ClientSession() as s, s.post(
        f"{idp.url}/{idp.tenant_id}/{path}", data=form, ssl=client_ssl_context(idp.ca_pem)
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert "refresh_token" not in body or path.endswith("v2.0/token")
        token: str = body["access_token"]
        return token


async def test_v1_token_endpoint_takes_resource_and_issues_v1_tokens(
    idp: SandboxIdp, both: TokenValidator
) -> None:
    """Entra v1's ``/oauth2/token`` with ``resource=`` gives v1 tokens that
    validate to the same principal as the v2 endpoint's, user and app alike."""
    user = {"grant_type": "password", "username": "demo@contoso.example", "password": "demo-password"}
    app = {"grant_type": "client_credentials", "client_id": CI_CLIENT_ID, "client_secret": CI_SECRET}
    for form in (user, app):
        p1 = await both.validate(await _token(idp, "oauth2/token", resource=AUD, **form))
        p2 = await both.validate(await _token(idp, "oauth2/v2.0/token", scope=f"{AUD}/.default", **form))
        assert (p1.claims["ver"], p1.issuer, p2.issuer) == ("1.0", idp.v1_issuer, idp.issuer)
        assert _fields(p1) == _fields(p2)
    async with aiohttp.ClientSession() as s, s.post(
        f"{idp.url}/{idp.tenant_id}/oauth2/token", data=user, ssl=client_ssl_context(idp.ca_pem)
    ) as resp:
        assert resp.status == 400 and "resource" in (await resp.json())["error_description"]
