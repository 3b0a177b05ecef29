"""JWKS discovery, rotation and the rate-limited refresh, counted at the real
sandbox issuer: a flood of random kids must not reach it."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator

import pytest

from identity import TokenInvalid, TokenValidator, TrustedIssuer
from sandbox.idp import SandboxIdp

AUD = "api://cluster-connect"


class FakeMonotonic:
    """A monotonic clock the test moves by hand (no sleeping, no timing)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mono() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
async def validator(idp: SandboxIdp, mono: FakeMonotonic) -> AsyncIterator[TokenValidator]:
    trusted = TrustedIssuer(issuer=idp.issuer, audiences=[AUD], ca_pem=idp.ca_pem)
    v = TokenValidator([trusted], jwks_min_refresh_interval=30, jwks_max_age=3600, monotonic=mono)
    yield v
    await v.close()


def _random_kid_token(idp: SandboxIdp) -> str:
    return idp.mint("demo", headers={"kid": secrets.token_urlsafe(12)})


async def test_jwks_discovered_once_and_cached(idp: SandboxIdp, validator: TokenValidator) -> None:
    """Discovery and JWKS are fetched once for many tokens signed by a known key."""
    for user in ("demo", "bob", "admin", "demo"):
        await validator.validate(idp.mint(user))
    assert idp.request_counts["discovery"] == 1 and idp.request_counts["jwks"] == 1


async def test_jwks_rotation_picked_up_on_unknown_kid(
    idp: SandboxIdp, validator: TokenValidator, mono: FakeMonotonic
) -> None:
    """After rotate_keys, a token with the new kid triggers one refresh (once the interval allows)."""
    await validator.validate(idp.mint("demo"))
    new_kid = idp.rotate_keys()
    token = idp.mint("bob")
    with pytest.raises(TokenInvalid, match="unknown signing key"):
        await validator.validate(token)  # within 30 s of the last refresh: not fetched
    assert idp.request_counts["jwks"] == 1
    mono.now += 31
    p = await validator.validate(token)
    assert p.upn == "bob@contoso.example" and idp.request_counts["jwks"] == 2
    assert new_kid in validator.jwks(idp.issuer).kids


async def test_jwks_old_key_still_valid_during_grace(
    idp: SandboxIdp, validator: TokenValidator, mono: FakeMonotonic
) -> None:
    """A token signed just before rotation keeps validating (old key kept in the JWKS)."""
    before = idp.mint("demo")
    idp.rotate_keys()
    after = idp.mint("bob")
    await validator.validate(after)  # first fetch: both keys
    await validator.validate(before)
    assert idp.request_counts["jwks"] == 1


async def test_jwks_dropped_key_refused_after_refresh(
    idp: SandboxIdp, validator: TokenValidator, mono: FakeMonotonic
) -> None:
    """rotate_keys(drop_old=True) withdraws the old key: once keys are re-fetched it is refused."""
    old_token = idp.mint("demo")
    idp.rotate_keys(drop_old=True)
    mono.now += 31
    await validator.validate(idp.mint("bob"))
    with pytest.raises(TokenInvalid, match="unknown signing key"):
        await validator.validate(old_token)


async def test_jwks_refresh_when_keys_older_than_max_age(
    idp: SandboxIdp, validator: TokenValidator, mono: FakeMonotonic
) -> None:
    """Keys held longer than jwks_max_age are re-fetched on the next new token."""
    await validator.validate(idp.mint("demo"))
    mono.now += 3601
    await validator.validate(idp.mint("bob"))
    assert idp.request_counts["jwks"] == 2


async def test_jwks_random_kid_flood_is_rate_limited(
    idp: SandboxIdp, validator: TokenValidator, mono: FakeMonotonic
) -> None:
    """300 tokens with random kids after a fresh fetch cause no request to the issuer at all."""
    await validator.validate(idp.mint("demo"))
    for _ in range(100):
        with pytest.raises(TokenInvalid):
            await validator.validate(_random_kid_token(idp))
    results = await asyncio.gather(
        *(validator.validate(_random_kid_token(idp)) for _ in range(200)), return_exceptions=True
    )
    assert all(isinstance(r, TokenInvalid) and r.reason == "unknown signing key" for r in results)
    assert idp.request_counts["jwks"] == 1 and idp.request_counts["discovery"] == 1


async def test_jwks_concurrent_unknown_kids_share_one_refresh(
    idp: SandboxIdp, validator: TokenValidator, mono: FakeMonotonic
) -> None:
    """A cold validator hit by 100 concurrent random kids makes exactly one discovery and one
    JWKS request; after the interval, another flood makes exactly one more."""
    flood = [_random_kid_token(idp) for _ in range(100)]
    await asyncio.gather(*(validator.validate(t) for t in flood), return_exceptions=True)
    assert idp.request_counts["discovery"] == 1 and idp.request_counts["jwks"] == 1
    mono.now += 31
    flood = [_random_kid_token(idp) for _ in range(100)] + [idp.mint("demo")]
    results = await asyncio.gather(*(validator.validate(t) for t in flood), return_exceptions=True)
    assert idp.request_counts["jwks"] == 2 and not isinstance(results[-1], Exception)
    assert validator.jwks(idp.issuer).refresh_count == 2


async def test_jwks_refuses_alg_not_matching_key_type(idp: SandboxIdp, validator: TokenValidator) -> None:
    """A token claiming ES256 under the kid of an RSA key is refused before any crypto."""
    genuine = idp.mint("demo")
    head, payload, sig = genuine.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    header["alg"] = "ES256"
    forged_head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenInvalid, match="algorithm does not match key"):
        await validator.validate(f"{forged_head}.{payload}.{sig}")
    assert validator.signature_verifications == 0


async def test_jwks_accepts_ps256_with_rsa_key(idp: SandboxIdp, validator: TokenValidator) -> None:
    """RSASSA-PSS (PS256) with the issuer's RSA key is on the allow-list and validates."""
    p = await validator.validate(idp.mint("demo", algorithm="PS256"))
    assert p.upn == "demo@contoso.example"


async def test_jwks_discovery_issuer_mismatch_refused(idp: SandboxIdp, mono: FakeMonotonic) -> None:
    """Trusting a URL whose discovery document names another issuer yields no keys."""
    alias = idp.issuer.replace("127.0.0.1", "localhost")
    v = TokenValidator([TrustedIssuer(issuer=alias, audiences=[AUD], ca_pem=idp.ca_pem)], monotonic=mono)
    try:
        with pytest.raises(TokenInvalid) as info:
            await v.validate(idp.mint("demo", iss=alias))
        assert info.value.reason == "signing keys unavailable"
        assert v.jwks(alias).last_error == "discovery issuer mismatch"
    finally:
        await v.close()


async def test_jwks_fixed_uri_skips_discovery(idp: SandboxIdp, mono: FakeMonotonic) -> None:
    """A TrustedIssuer with jwks_uri fetches keys there and never asks for discovery."""
    trusted = TrustedIssuer(issuer=idp.issuer, audiences=[AUD], ca_pem=idp.ca_pem, jwks_uri=idp.jwks_uri)
    v = TokenValidator([trusted], monotonic=mono)
    try:
        await v.validate(idp.mint("demo"))
        assert idp.request_counts.get("discovery", 0) == 0 and idp.request_counts["jwks"] == 1
    finally:
        await v.close()


async def test_jwks_discovery_url_override(idp: SandboxIdp, mono: FakeMonotonic) -> None:
    """discovery_url (Entra v1 style: document elsewhere) is used; its issuer must still match."""
    url = idp.issuer + "/.well-known/openid-configuration"
    trusted = TrustedIssuer(issuer=idp.issuer, audiences=[AUD], ca_pem=idp.ca_pem, discovery_url=url)
    v = TokenValidator([trusted], monotonic=mono)
    try:
        await v.validate(idp.mint("demo"))
        assert idp.request_counts["discovery"] == 1
    finally:
        await v.close()
