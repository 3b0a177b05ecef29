"""Proof-of-possession: the signed HTTP request (SHR) that carries an access
token bound to the client's key, as kubelogin's ``--pop-enabled`` and Entra do.

The format is written down in docs/pop.md (with test vectors). In short: a
JWS compact token, header ``{"alg", "kid", "typ": "pop"}``, payload
``{"at", "cnf": {"jwk"}, "nonce", "ts", "u"}``, signed by the client's key.
``kid`` is the RFC 7638 thumbprint of ``cnf.jwk``; the access token ``at``
names the same thumbprint in its own ``cnf.kid`` (the issuer bound it there).

:func:`verify_shr` checks the SHR itself (shape, key, signature, ``u``,
``ts``); the caller then validates ``at`` with :class:`identity.TokenValidator`
as any bearer token and checks :func:`bound_key_id` of its claims against
:attr:`SignedRequest.key_id` -- the validator and this module stay separate so
that a cached ``at`` costs no second signature check.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from identity.errors import TokenInvalid

__all__ = [
    "POP_ALGORITHMS",
    "POP_TYP",
    "SignedRequest",
    "bound_key_id",
    "is_signed_request",
    "jwk_thumbprint",
    "verify_shr",
]

#: ``typ`` of a signed HTTP request's header (what tells it from a bearer JWT).
POP_TYP = "pop"
#: What the client's key may sign with (kubelogin uses RS256; ES256 is smaller).
POP_ALGORITHMS = frozenset({"RS256", "ES256"})
# The members RFC 7638 hashes, per key type, in the (lexical) order it hashes them.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}
# An SHR is an access token (<= 64 KiB, identity/oidc.py) plus ~1 KiB.
MAX_SHR_BYTES = 66 * 1024


@dataclass(frozen=True)
class SignedRequest:
    """A verified SHR: the access token inside and the key that signed it.

    Attributes:
        access_token: ``at``: validate it as a bearer token next.
        key_id: the RFC 7638 thumbprint of the signing key; ``at`` must be bound to it.
        ts: when the client signed it (seconds since the epoch).
        target: ``u``, the cluster it names.
    """

    access_token: str
    key_id: str
    ts: float
    target: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of a public JWK.

    Raises:
        TokenInvalid: not an RSA or EC public key with string members.
    """
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) and jwk.get(m) for m in members):
        raise TokenInvalid("malformed proof-of-possession key")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def bound_key_id(claims: Mapping[str, Any]) -> str | None:
    """The thumbprint an access token is bound to (its ``cnf.kid``, or the
    thumbprint of ``cnf.jwk``), or None for an unbound token."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping):
        return None
    kid = cnf.get("kid")
    if isinstance(kid, str) and kid:
        return kid
    jwk = cnf.get("jwk")
    if isinstance(jwk, Mapping):
        try:
            return jwk_thumbprint(jwk)
        except TokenInvalid:
            return None
    return None


def is_signed_request(token: str) -> bool:
    """Whether ``token``'s header says ``typ: pop`` (no verification: it picks the path)."""
    head = token.split(".", 1)[0]
    if len(head) > 4096:
        return False
    try:
        header = _b64json(head)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(header, dict) and header.get("typ") == POP_TYP


def _public_key(jwk: Mapping[str, Any], alg: str) -> Any:
    try:
        if alg == "RS256" and jwk.get("kty") == "RSA":
            return RSAAlgorithm.from_jwk(dict(jwk))
        if alg == "ES256" and jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            return ECAlgorithm.from_jwk(dict(jwk))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise TokenInvalid("malformed proof-of-possession key") from exc
    raise TokenInvalid("proof-of-possession key does not match its algorithm")


def verify_shr(token: str, *, targets: frozenset[str], now: float, max_age: float,
               skew: float) -> SignedRequest:
    """Verify a signed HTTP request addressed to one of ``targets``.

    Args:
        token: the SHR (what kubectl sent as its bearer token).
        targets: the names this cluster answers to (``u`` must be one).
        now: seconds since the epoch.
        max_age: how old ``ts`` may be.
        skew: how far ``ts`` may lie in the future (clock skew).

    Returns:
        The verified request; ``access_token`` is not validated yet.

    Raises:
        TokenInvalid: with a short reason naming what failed (never the token).
    """
    if len(token) > MAX_SHR_BYTES or token.count(".") != 2:
        raise TokenInvalid("malformed proof-of-possession token")
    head, body, _ = token.split(".")
    try:
        header, claims = _b64json(head), _b64json(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise TokenInvalid("malformed proof-of-possession token") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("typ") != POP_TYP:
        raise TokenInvalid("malformed proof-of-possession token")
    alg = header.get("alg")
    if alg not in POP_ALGORITHMS or "crit" in header:
        raise TokenInvalid("proof-of-possession algorithm not allowed")
    cnf = claims.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, dict) else None
    if not isinstance(jwk, dict):
        raise TokenInvalid("proof-of-possession token has no key")
    key_id = jwk_thumbprint(jwk)
    if header.get("kid") != key_id:
        raise TokenInvalid("proof-of-possession key id does not match its key")
    try:
        jwt.PyJWS().decode(token, key=_public_key(jwk, str(alg)), algorithms=[str(alg)])
    except jwt.InvalidSignatureError as exc:
        raise TokenInvalid("bad proof-of-possession signature") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid("malformed proof-of-possession token") from exc
    at, ts, target = claims.get("at"), claims.get("ts"), claims.get("u")
    if not isinstance(at, str) or not at:
        raise TokenInvalid("proof-of-possession token has no access token")
    if not isinstance(target, str) or target not in targets:
        raise TokenInvalid("proof-of-possession token is for another cluster")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise TokenInvalid("proof-of-possession token has no timestamp")
    if ts > now + skew:
        raise TokenInvalid("proof-of-possession token signed in the future")
    if ts < now - max_age - skew:
        raise TokenInvalid("proof-of-possession token expired")
    if not isinstance(claims.get("nonce"), str) or not claims["nonce"]:
        raise TokenInvalid("proof-of-possession token has no nonce")
    return SignedRequest(access_token=at, key_id=key_id, ts=float(ts), target=target)
