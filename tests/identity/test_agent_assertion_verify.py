"""The relay's own assertion verification, checked against PyJWT's.

``AgentAssertionVerifier.verify`` no longer goes through ``jwt.decode`` (cost
per connect). Each case below is a token an attacker or a broken agent could
send; the verifier must never accept one that PyJWT (with the same key,
algorithm, audience, leeway and required claims) refuses, must accept what an
agent signs, and gives the reasons the relay logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certs import generate_key_pair, load_private_key
from identity import TokenInvalid
from identity.agent_assertion import AgentAssertionVerifier, sign_agent_assertion

AUD = "https://relay.test/agent/v1/connect"
EC_KEYS = generate_key_pair("rg/a")
RSA_KEYS = generate_key_pair("rg/a", kind="rsa")
OTHER_EC_KEYS = generate_key_pair("rg/a")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": "rg/a", "sub": "rg/a", "aud": AUD, "iat": now, "nbf": now - 5,
                            "exp": now + 120, "jti": uuid.uuid4().hex}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def _es256(claims: dict[str, Any], headers: dict[str, Any] | None = None, keys: Any = EC_KEYS) -> str:
    return jwt.encode(claims, load_private_key(keys.private_key_pem), algorithm="ES256",  # type: ignore[arg-type]
                      headers=headers)


def _raw(header: dict[str, Any] | list[Any], claims: Any, signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


def _resigned(header: dict[str, Any], claims: Any) -> str:
    """A token with any header and payload, validly ES256-signed by the agent's key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    key = load_private_key(EC_KEYS.private_key_pem)
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))  # type: ignore[union-attr,call-arg]
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _hs256_with(secret: bytes, claims: dict[str, Any]) -> str:
    """The classic confusion: HMAC keyed with the (public) registered certificate."""
    signing_input = f"{_b64(json.dumps({'alg': 'HS256'}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _pyjwt_accepts(token: str, certificate_pem: bytes, alg: str) -> bool:
    from cryptography import x509

    key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    try:
        jwt.decode(token, key, algorithms=[alg], audience=[AUD], leeway=60,  # type: ignore[arg-type]
                   options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]})
    except jwt.PyJWTError:
        return False
    return True


def _ours(token: str, certificate_pem: bytes = EC_KEYS.certificate_pem) -> str:
    """'ok' or the reason the verifier gives."""
    try:
        AgentAssertionVerifier(AUD).verify(token, certificate_pem)
    except TokenInvalid as exc:
        return exc.reason
    return "ok"


def _cases() -> dict[str, tuple[Callable[[], str], str]]:
    """name -> (makes the token now, reason expected from our verifier), against
    the EC key. Tokens are made when the test runs, not at collection: their
    times must be current."""
    now = int(time.time())

    def valid() -> str:
        return _es256(_claims())

    def flipped_signature() -> str:
        head, body, sig = valid().split(".")
        flipped = bytearray(base64.urlsafe_b64decode(sig + "=="))
        flipped[10] ^= 1
        return f"{head}.{body}.{_b64(bytes(flipped))}"

    def payload_swapped() -> str:
        head, _, sig = valid().split(".")
        return f"{head}.{_b64(json.dumps(_claims(iss='rg/b', sub='rg/b')).encode())}.{sig}"

    def part(i: int, suffix: str = "") -> Callable[[], str]:
        def make() -> str:
            parts = valid().split(".")
            parts[i] += suffix
            return ".".join(parts) if suffix else ".".join(parts[:i] + parts[i + 1:])
        return make

    cases: dict[str, tuple[Callable[[], str], str]] = {
        "valid": (valid, "ok"),
        "valid, no nbf": (lambda: _es256(_claims(nbf=DROP)), "ok"),
        "valid, aud list": (lambda: _es256(_claims(aud=["https://other", AUD])), "ok"),
        "signature bit flipped": (flipped_signature, "signature"),
        "payload swapped": (payload_swapped, "signature"),
        "other key": (lambda: _es256(_claims(), keys=OTHER_EC_KEYS), "signature"),
        "empty signature": (lambda: ".".join(valid().split(".")[:2]) + ".", "signature"),
        "two parts": (part(2), "malformed"),
        "alg none": (lambda: _raw({"alg": "none", "typ": "JWT"}, _claims()), "algorithm"),
        "alg HS256 keyed with the certificate":
            (lambda: _hs256_with(EC_KEYS.certificate_pem, _claims()), "algorithm"),
        "alg RS256 against an EC key":
            (lambda: sign_agent_assertion(RSA_KEYS.private_key_pem, "rg/a", AUD), "algorithm"),
        "crit header": (lambda: _resigned({"alg": "ES256", "crit": ["exp"]}, _claims()), "malformed"),
        "header not an object": (lambda: _raw(["ES256"], _claims()), "malformed"),
        "payload not an object": (lambda: _resigned({"alg": "ES256"}, ["rg/a"]), "malformed"),
        "padding in a segment": (part(1, "="), "malformed"),
        "non-ascii in a segment": (part(1, "\u00e9"), "malformed"),
        "expired": (lambda: _es256(_claims(iat=now - 900, nbf=DROP, exp=now - 61)), "expired"),
        "issued in the future":
            (lambda: _es256(_claims(iat=now + 300, nbf=DROP, exp=now + 400)), "not yet valid"),
        "not before in the future": (lambda: _es256(_claims(nbf=now + 300)), "not yet valid"),
        "exp a string": (lambda: _resigned({"alg": "ES256"}, _claims(exp=str(now + 100))), "malformed"),
        "exp a boolean": (lambda: _resigned({"alg": "ES256"}, _claims(exp=True)), "malformed"),
        "exp huge": (lambda: _resigned({"alg": "ES256"}, _claims(exp=10**400)), "malformed"),
        "other audience": (lambda: _es256(_claims(aud="https://other")), "audience"),
        "audience not a string": (lambda: _resigned({"alg": "ES256"}, _claims(aud=[AUD, 1])), "malformed"),
        "audience an object": (lambda: _resigned({"alg": "ES256"}, _claims(aud={"x": AUD})), "malformed"),
        "iss not a string":
            (lambda: _resigned({"alg": "ES256"}, _claims(iss=["rg/a"], sub=["rg/a"])), "subject"),
    }
    for name in ("iss", "sub", "aud", "exp", "iat", "jti"):
        cases[f"no {name}"] = (lambda name=name: _es256(_claims(**{name: DROP})), "required claim")  # type: ignore[misc]
    return cases


@pytest.mark.parametrize("name", list(_cases()))
def test_verifier_refuses_what_pyjwt_refuses_with_its_reason(name: str) -> None:
    """Our verdict on each case: the expected reason, and never an accept where
    PyJWT refuses (we are stricter on strings as dates, padding and ``crit``)."""
    make, reason = _cases()[name]
    token = make()
    ours = _ours(token)
    assert reason in ours, f"{name}: {ours}"
    if ours == "ok":
        assert _pyjwt_accepts(token, EC_KEYS.certificate_pem, "ES256"), name


def test_verifier_accepts_rsa_assertions_and_refuses_a_tampered_one() -> None:
    """RS256 (an agent with an RSA key) verifies; a changed payload does not."""
    token = sign_agent_assertion(RSA_KEYS.private_key_pem, "rg/a", AUD)
    assert _ours(token, RSA_KEYS.certificate_pem) == "ok"
    head, _, sig = token.split(".")
    forged = f"{head}.{_b64(json.dumps(_claims()).encode())}.{sig}"
    assert "signature" in _ours(forged, RSA_KEYS.certificate_pem)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.characters(min_codepoint=32, max_codepoint=0x2FF))
def test_verifier_never_accepts_a_changed_token(position: int, replacement: str) -> None:
    """Any one character of a valid assertion changed: refused (or, if the
    change leaves the decoded bytes equal, accepted by PyJWT too)."""
    token = _es256(_claims())
    i = position % len(token)
    changed = token[:i] + replacement + token[i + 1:]
    if changed == token:
        return
    if _ours(changed) == "ok":
        assert _pyjwt_accepts(changed, EC_KEYS.certificate_pem, "ES256")
