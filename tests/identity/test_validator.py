"""TokenValidator against the real sandbox issuer over HTTPS on loopback:
accepted tokens from each grant, every refusal as a named case, the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry

from certs import client_ssl_context
from identity import Principal, TokenInvalid, TokenValidator, TokenValidatorCollector, TrustedIssuer
from sandbox.idp import SandboxIdp

AUD = "api://cluster-connect"
SCOPE = AUD + "/.default"
DEMO_OID = "35233192-fc5d-4d88-83c8-36ab5ca99ad9"
DEVELOPERS = "1babbe50-9daf-4990-acad-d801629bb7a8"


def _trust(idp: SandboxIdp, **kw: Any) -> TrustedIssuer:
    return TrustedIssuer(issuer=idp.issuer, audiences=[AUD], ca_pem=idp.ca_pem, **kw)


@pytest.fixture
async def validator(idp: SandboxIdp) -> AsyncIterator[TokenValidator]:
    v = TokenValidator([_trust(idp)], clock_skew=60)
    yield v
    await v.close()


async def _grant(idp: SandboxIdp, **form: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(idp.token_endpoint, data=form, ssl=client_ssl_context(idp.ca_pem)) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _refused(validator: TokenValidator, token: str, reason: str) -> None:
    with pytest.raises(TokenInvalid) as info:
        await validator.validate(token)
    assert info.value.reason == reason
    # The refusal never carries the token or a piece of it.
    for part in token.split("."):
        if part:
            assert part not in str(info.value) and part not in repr(info.value)


async def test_validator_accepts_password_grant_token(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A user token from the password grant yields the user's oid, upn, tid and groups."""
    body = await _grant(
        idp, grant_type="password", username="demo@contoso.example", password="demo-password", scope=SCOPE
    )
    p = await validator.validate(body["access_token"])
    assert isinstance(p, Principal)
    assert (p.oid, p.upn, p.tid, p.groups) == (DEMO_OID, "demo@contoso.example", idp.tenant_id, (DEVELOPERS,))
    assert p.issuer == idp.issuer and not p.has_group_overage and not p.is_app
    assert abs(p.expires_at - (time.time() + 3600)) < 120 and p.claims["ver"] == "2.0"


async def test_validator_accepts_client_credentials_token(idp: SandboxIdp, validator: TokenValidator) -> None:
    """An app token from client credentials yields the service principal, upn None."""
    body = await _grant(
        idp, grant_type="client_credentials", client_id="2788b2a2-9ad3-4af4-8567-a7214ea67c4a",
        client_secret="ci-secret", scope=SCOPE,
    )
    p = await validator.validate(body["access_token"])
    assert p.oid == "a1e59bc1-9bda-4925-8724-233e595568d5" and p.upn is None and p.is_app


async def test_validator_accepts_refreshed_token(idp: SandboxIdp, validator: TokenValidator) -> None:
    """The access token from a refresh_token grant validates as the same user."""
    first = await _grant(
        idp, grant_type="password", username="bob", password="bob-password", scope=SCOPE
    )
    second = await _grant(idp, grant_type="refresh_token", refresh_token=first["refresh_token"])
    a = await validator.validate(first["access_token"])
    b = await validator.validate(second["access_token"])
    assert a.oid == b.oid == "7a338408-e16c-4e47-9de2-1202ff0e1eaa"


async def test_validator_caches_validated_token(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A second validate of the same token does not verify the signature again."""
    registry = CollectorRegistry()
    registry.register(TokenValidatorCollector(validator, "arc_test"))
    metric = "arc_test_token_signature_verifications_total"
    token = idp.mint("demo")
    first = await validator.validate(token)
    second = await validator.validate(token)
    assert first is second and validator.signature_verifications == 1
    assert registry.get_sample_value(metric) == 1
    assert registry.get_sample_value("arc_test_token_validations_total", {"result": "cached"}) == 1
    await validator.validate(idp.mint("bob"))
    assert validator.signature_verifications == 2


async def test_validator_cache_is_bounded_lru(idp: SandboxIdp) -> None:
    """With room for two tokens, the least recently used one is verified again."""
    v = TokenValidator([_trust(idp)], cache_size=2)
    try:
        a, b, c = idp.mint("demo"), idp.mint("bob"), idp.mint("admin")
        for t in (a, b, a, c):  # c evicts b (a was used more recently)
            await v.validate(t)
        assert v.signature_verifications == 3
        await v.validate(a)
        assert v.signature_verifications == 3
        await v.validate(b)
        assert v.signature_verifications == 4
    finally:
        await v.close()


async def test_validator_cached_token_expires(idp: SandboxIdp) -> None:
    """A cached token is refused once its exp (plus skew) has passed."""
    now = [time.time()]
    v = TokenValidator([_trust(idp)], clock_skew=60, clock=lambda: now[0])
    try:
        token = idp.mint("demo", lifetime=30)
        await v.validate(token)
        now[0] += 30 + 61
        await _refused(v, token, "token expired")
    finally:
        await v.close()


async def test_validator_refuses_alg_none(idp: SandboxIdp, validator: TokenValidator) -> None:
    """An unsigned token (alg none) is refused."""
    token = idp.mint("demo", algorithm="none")
    assert token.endswith(".")
    await _refused(validator, token, "algorithm not allowed")


async def test_validator_refuses_hs256_signed_with_public_key(idp: SandboxIdp, validator: TokenValidator) -> None:
    """HS256 keyed with the issuer's public key (PEM, and the JWK's n) is refused: HMAC is never allowed."""
    public_pem = idp.signing_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_pem == idp.public_key_pem
    n = base64.urlsafe_b64decode(idp.signing_key.public_jwk["n"] + "==")
    for secret in (public_pem, n):
        token = idp.mint("demo", algorithm="HS256", key=secret, headers={"kid": idp.signing_key.kid})
        head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        assert head["alg"] == "HS256"
        # The forgery is well made: the HMAC checks out with the public key as secret.
        signing_input, _, sig = token.rpartition(".")
        expected = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert sig == _b64(expected)
        await _refused(validator, token, "algorithm not allowed")
    assert validator.signature_verifications == 0


async def test_validator_refuses_wrong_issuer(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token whose iss differs from the trusted issuer (even by a trailing slash) is refused."""
    await _refused(validator, idp.mint("demo", iss=idp.issuer + "/"), "untrusted issuer")


async def test_validator_refuses_wrong_audience(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token for another audience is refused."""
    await _refused(validator, idp.mint("demo", audience="api://something-else"), "wrong audience")


async def test_validator_refuses_expired_token(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token that expired more than the skew ago is refused."""
    now = int(time.time())
    token = idp.mint("demo", iat=now - 3600, nbf=now - 3600, exp=now - 61)
    await _refused(validator, token, "token expired")


async def test_validator_accepts_expiry_within_skew(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token that expired less than the skew ago is still accepted."""
    now = int(time.time())
    await validator.validate(idp.mint("demo", iat=now - 600, nbf=now - 600, exp=now - 30))


async def test_validator_refuses_nbf_in_future(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token not valid before a time beyond the skew is refused."""
    await _refused(validator, idp.mint("demo", nbf=int(time.time()) + 600), "token not yet valid")


async def test_validator_refuses_iat_in_future(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token issued in the future beyond the skew is refused."""
    await _refused(validator, idp.mint("demo", iat=int(time.time()) + 600), "token issued in the future")


async def test_validator_refuses_token_without_exp(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token with no exp is refused."""
    await _refused(validator, idp.mint("demo", exp=None), "token has no expiry")


async def test_validator_refuses_unknown_kid(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token signed by a key the issuer never published is refused."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = idp.mint("demo", key=stranger, headers={"kid": "not-a-published-kid"})
    await _refused(validator, token, "unknown signing key")


async def test_validator_refuses_foreign_key_with_issuer_kid(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token signed by another key but naming the issuer's kid fails the signature check."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = idp.mint("demo", key=stranger, headers={"kid": idp.signing_key.kid})
    await _refused(validator, token, "bad signature")


async def test_validator_refuses_tampered_payload(idp: SandboxIdp, validator: TokenValidator) -> None:
    """Changing a claim after signing (here: adding a group) breaks the signature."""
    head, payload, sig = idp.mint("bob").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"].append("ab29c3b7-e726-4f01-8dc5-4e1c276252b6")
    await _refused(validator, f"{head}.{_b64(json.dumps(claims).encode())}.{sig}", "bad signature")


async def test_validator_refuses_other_tenant(idp: SandboxIdp) -> None:
    """With a tid allow-list, a token of another tenant from the same issuer is refused."""
    v = TokenValidator([_trust(idp, tenant_ids=[idp.tenant_id])])
    try:
        await v.validate(idp.mint("demo"))
        other = idp.mint("demo", tid="00000000-0000-0000-0000-000000000001")
        await _refused(v, other, "tenant not allowed")
    finally:
        await v.close()


async def test_validator_refuses_malformed_tokens(validator: TokenValidator) -> None:
    """Garbage, two-part and non-JSON tokens are refused as malformed, never crash."""
    for junk in ("", "abc", "a.b", "a.b.c", "e30.e30.e30.e30", "x" * 70_000):
        with pytest.raises(TokenInvalid) as info:
            await validator.validate(junk)
        assert info.value.reason in ("malformed token", "algorithm not allowed")


async def test_validator_trusts_several_issuers(idp: SandboxIdp, tmp_path: Path) -> None:
    """Two issuers at once: each one's tokens validate; an issuer not configured is refused."""
    other = SandboxIdp(tmp_path / "other")
    await other.start()
    both = TokenValidator([_trust(idp), _trust(other)])
    only_first = TokenValidator([_trust(idp)])
    try:
        assert [i.issuer for i in both.issuers] == [idp.issuer, other.issuer]
        assert (await both.validate(idp.mint("demo"))).issuer == idp.issuer
        assert (await both.validate(other.mint("demo"))).issuer == other.issuer
        await _refused(only_first, other.mint("demo"), "untrusted issuer")
    finally:
        await both.close()
        await only_first.close()
        await other.stop()


async def test_validator_reports_unreachable_issuer(idp: SandboxIdp) -> None:
    """When the issuer cannot be reached, tokens are refused with a reason saying so."""
    v = TokenValidator([_trust(idp)], http_timeout=5)
    token = idp.mint("demo")
    await idp.stop()
    try:
        await _refused(v, token, "signing keys unavailable")
    finally:
        await v.close()
