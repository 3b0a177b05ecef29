"""Non-Entra issuers: a Keycloak-shaped issuer (ES256 keys, no tid) served over
real TLS on loopback next to the sandbox issuer, and JWK parsing rules."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from certs import CertificateAuthority, server_ssl_context
from identity import TokenInvalid, TokenValidator, TrustedIssuer
from identity.jwks import parse_jwk
from sandbox.idp import SandboxIdp

AUD = "api://cluster-connect"


@dataclass
class EcIssuer:
    """A minimal OIDC issuer with one P-256 key (discovery + JWKS only)."""

    issuer: str
    ca_pem: bytes
    key: ec.EllipticCurvePrivateKey
    kid: str = "ec-1"

    def mint(self, **claims: object) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUD, "sub": "kc-user-1", "iat": now, "exp": now + 300,
                "preferred_username": "kc@example.org", "groups": ["kc-group"]}
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": self.kid})


@pytest.fixture
async def ec_issuer() -> AsyncIterator[EcIssuer]:
    ca = CertificateAuthority.create("test ec issuer CA")
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "ec-1", "use": "sig", "alg": "ES256"})
    state: dict[str, str] = {}

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({"issuer": state["issuer"], "jwks_uri": state["issuer"] + "/certs"})

    async def certs(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.add_routes([
        web.get("/realms/demo/.well-known/openid-configuration", discovery),
        web.get("/realms/demo/certs", certs),
    ])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(ca.issue_server()))
    await site.start()
    port = runner.addresses[0][1]
    state["issuer"] = f"https://127.0.0.1:{port}/realms/demo"
    yield EcIssuer(state["issuer"], ca.certificate_pem, key)
    await runner.cleanup()


async def test_issuers_es256_keycloak_style_and_entra_side_by_side(ec_issuer: EcIssuer, idp: SandboxIdp) -> None:
    """One validator trusts an ES256 issuer without tenants and the Entra-shaped sandbox issuer."""
    v = TokenValidator([
        TrustedIssuer(issuer=ec_issuer.issuer, audiences=[AUD], ca_pem=ec_issuer.ca_pem),
        TrustedIssuer(issuer=idp.issuer, audiences=[AUD], ca_pem=idp.ca_pem, tenant_ids=[idp.tenant_id]),
    ])
    try:
        kc = await v.validate(ec_issuer.mint())
        assert (kc.oid, kc.upn, kc.tid, kc.groups) == ("kc-user-1", "kc@example.org", None, ("kc-group",))
        entra = await v.validate(idp.mint("demo"))
        assert entra.tid == idp.tenant_id
    finally:
        await v.close()


async def test_issuers_tid_allow_list_refuses_issuer_without_tid(ec_issuer: EcIssuer) -> None:
    """A tid allow-list on an issuer whose tokens carry no tid refuses them."""
    v = TokenValidator([TrustedIssuer(ec_issuer.issuer, [AUD], ec_issuer.ca_pem, tenant_ids=["t1"])])
    try:
        with pytest.raises(TokenInvalid, match="tenant not allowed"):
            await v.validate(ec_issuer.mint())
    finally:
        await v.close()


async def test_issuers_refuse_wrong_ca(ec_issuer: EcIssuer, idp: SandboxIdp) -> None:
    """Discovery over TLS with a CA that did not sign the issuer's certificate yields no keys."""
    v = TokenValidator([TrustedIssuer(ec_issuer.issuer, [AUD], ca_pem=idp.ca_pem)])
    try:
        with pytest.raises(TokenInvalid, match="signing keys unavailable"):
            await v.validate(ec_issuer.mint())
    finally:
        await v.close()


async def test_issuers_jwk_alg_pins_algorithm(ec_issuer: EcIssuer) -> None:
    """A JWK that pins alg ES256 refuses an ES384-labelled token under its kid."""
    v = TokenValidator([TrustedIssuer(ec_issuer.issuer, [AUD], ec_issuer.ca_pem)])
    try:
        other = ec.generate_private_key(ec.SECP384R1())
        token = jwt.encode({"iss": ec_issuer.issuer}, other, algorithm="ES384", headers={"kid": "ec-1"})
        with pytest.raises(TokenInvalid, match="algorithm does not match key"):
            await v.validate(token)
    finally:
        await v.close()


def test_issuers_parse_jwk_skips_unusable_keys() -> None:
    """JWKs for encryption, without kid, with weak RSA or unknown types are skipped."""
    strong = json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key()))
    weak = json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key()))
    assert parse_jwk({**strong, "kid": "a"}) is not None
    assert parse_jwk({**strong, "kid": "a", "use": "enc"}) is None
    assert parse_jwk(strong) is None
    assert parse_jwk({**weak, "kid": "w"}) is None
    assert parse_jwk({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}) is None
    assert parse_jwk({"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}) is None
    assert parse_jwk("not a dict") is None
