"""OIDC bearer-token validation shared by the relay and kube-aad-proxy.

Order of checks, cheapest and least trusting first: size and shape, the
validated-token cache (by SHA-256 of the token), header ``alg`` against the
allow-list, ``iss`` against the trusted issuers (exact match), ``kid`` in that
issuer's JWKS, the signature, then ``aud``, ``exp``/``nbf``/``iat``, ``tid``
and finally group overage. Nothing from the token is trusted before its
signature is; the unverified ``iss`` and ``kid`` only choose which key to try.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeGuard

import aiohttp
import jwt

from identity.errors import GroupResolutionError, TokenInvalid
from identity.groups import GroupResolver, overage_source
from identity.http import DEFAULT_HTTP_TIMEOUT
from identity.jwks import (
    DEFAULT_MAX_KEY_AGE,
    DEFAULT_MIN_REFRESH_INTERVAL,
    JwksCache,
    VerificationKey,
)
from identity.principal import Principal

log = logging.getLogger("identity")

#: Asymmetric algorithms only: never ``none``, never HMAC (an HMAC "key" would
#: be the issuer's public key, which everybody has).
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"}
)
_ALG_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

# Entra tokens with 200 groups are ~10 KiB; 64 KiB bounds parsing work.
MAX_TOKEN_BYTES = 64 * 1024
DEFAULT_CLOCK_SKEW = 60.0
# Enough for every active user of a large cluster; entries are ~1-10 KiB.
DEFAULT_CACHE_SIZE = 10_000

@dataclass(frozen=True)
class TrustedIssuer:
    """One issuer whose tokens are accepted.

    Attributes:
        issuer: the exact ``iss`` value (e.g. ``https://login.microsoftonline.com/<tid>/v2.0``).
        audiences: accepted ``aud`` values; at least one.
        ca_pem: CA for discovery/JWKS TLS, else the system store.
        tenant_ids: if set, only tokens whose ``tid`` is listed are accepted.
        discovery_url: where the discovery document lives when it is not
            ``<issuer>/.well-known/openid-configuration`` (Entra v1: issuer
            ``https://sts.windows.net/<tid>/``, document on login.microsoftonline.com).
            The document's ``issuer`` must still equal :attr:`issuer`.
        jwks_uri: skip discovery and fetch keys from here.
    """

    issuer: str
    audiences: Sequence[str]
    ca_pem: bytes | str | None = None
    tenant_ids: Sequence[str] | None = None
    discovery_url: str | None = None
    jwks_uri: str | None = None

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("issuer must not be empty")
        if isinstance(self.audiences, str) or not self.audiences:
            raise ValueError("audiences must be a non-empty list of strings")


def token_digest(token: str) -> bytes:
    """The key a token is cached under: its SHA-256, so raw tokens are not kept.

    ``surrogateescape``: a header decoded leniently may carry lone surrogates;
    such a token is hashed (and then refused), never an encoding error.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _b64json(segment: str) -> Any:
    pad = "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(segment + pad))


class TokenValidator:
    """Validates OIDC access tokens from several trusted issuers.

    Call :meth:`validate` per request; it is cheap for a token seen before.
    Call :meth:`close` when done.

    Args:
        issuers: the trusted issuers (``iss`` must match one exactly).
        clock_skew: seconds of tolerance for ``exp``, ``nbf`` and ``iat``.
        group_resolver: resolves overage groups; without one, overage tokens
            are refused.
        algorithms: allowed JWS algorithms (a subset of :data:`ALLOWED_ALGORITHMS`).
        cache_size: validated tokens kept (LRU).
        jwks_min_refresh_interval: seconds between JWKS refreshes per issuer.
        jwks_max_age: seconds after which held keys are re-fetched.
        clock: wall clock, seconds since the epoch (tests inject one).
        monotonic: clock for JWKS rate limiting (tests inject one).
    """

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        *,
        group_resolver: GroupResolver | None = None,
        algorithms: Sequence[str] = tuple(sorted(ALLOWED_ALGORITHMS)),
        cache_size: int = DEFAULT_CACHE_SIZE,
        jwks_min_refresh_interval: float = DEFAULT_MIN_REFRESH_INTERVAL,
        jwks_max_age: float = DEFAULT_MAX_KEY_AGE,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuers:
            raise ValueError("at least one trusted issuer is required")
        bad = set(algorithms) - ALLOWED_ALGORITHMS
        if bad:
            raise ValueError(f"algorithms not allowed: {sorted(bad)}")
        self._issuers = {i.issuer: i for i in issuers}
        self._skew = clock_skew
        self._resolver = group_resolver
        self._algorithms = frozenset(algorithms)
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._jwks = {
            i.issuer: JwksCache(
                i.issuer,
                self._http,
                ca_pem=i.ca_pem,
                discovery_url=i.discovery_url,
                jwks_uri=i.jwks_uri,
                min_refresh_interval=jwks_min_refresh_interval,
                max_key_age=jwks_max_age,
                http_timeout=http_timeout,
                monotonic=monotonic,
            )
            for i in issuers
        }
        #: signatures verified by this validator (cache hits do not count)
        self.signature_verifications = 0
        #: validations by result: ``ok``, ``cached`` or the refusal reason (a
        #: fixed vocabulary, identity/errors.py); exposed by identity/metrics.py
        self.validations: Counter[str] = Counter()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    @property
    def issuers(self) -> tuple[TrustedIssuer, ...]:
        """The trusted issuers, in configuration order."""
        return tuple(self._issuers.values())

    def jwks(self, issuer: str) -> JwksCache:
        """The key cache of one trusted issuer (for metrics and tests)."""
        return self._jwks[issuer]

    async def validate(self, token: str) -> Principal:
        """Validate ``token`` and return who it speaks for.

        Raises:
            TokenInvalid: with a short ``reason``; the token is never in it.
        """
        try:
            principal, cached = await self._validate(token)
        except TokenInvalid as exc:
            self.validations[exc.reason] += 1
            log.debug("token refused reason=%s", exc.reason)
            raise
        self.validations["cached" if cached else "ok"] += 1
        return principal

    def cached(self, digest: bytes) -> Principal | None:
        """The principal of a token validated before and not yet expired (its
        ``exp`` plus the clock skew), by :func:`token_digest`; no I/O, no crypto.

        kube-aad-proxy decides most requests with this alone, synchronously;
        on None it awaits :meth:`validate`.
        """
        hit = self._cache.get(digest)
        if hit is None:
            return None
        if self._clock() < hit.expires_at + self._skew:
            self._cache.move_to_end(digest)
            return hit
        del self._cache[digest]
        return None

    async def _validate(self, token: str) -> tuple[Principal, bool]:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise TokenInvalid("malformed token")
        digest = token_digest(token)
        hit = self.cached(digest)
        if hit is not None:
            return hit, True
        principal = await self._verify(token)
        self._cache[digest] = principal
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal, False

    async def _verify(self, token: str) -> Principal:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenInvalid("malformed token")
        try:
            header, unverified = _b64json(parts[0]), _b64json(parts[1])
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenInvalid("malformed token") from exc
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise TokenInvalid("malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise TokenInvalid("algorithm not allowed")
        if "crit" in header:  # RFC 7515 §4.1.11: we understand no extensions
            raise TokenInvalid("unsupported critical header")
        iss = unverified.get("iss")
        trusted = self._issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise TokenInvalid("untrusted issuer")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenInvalid("token has no key id")
        jwks = self._jwks[trusted.issuer]
        key = await jwks.get(kid)
        if key is None:
            # Distinguish "issuer unreachable" from "kid not published" for operators.
            down = jwks.last_error is not None and not jwks.kids
            raise TokenInvalid("signing keys unavailable" if down else "unknown signing key")
        claims = self._check_signature(token, alg, key)
        if claims.get("iss") != trusted.issuer:  # same bytes, but never trust the unverified copy
            raise TokenInvalid("untrusted issuer")
        self._check_claims(claims, trusted)
        return await self._principal(claims, trusted)

    def _check_signature(self, token: str, alg: str, key: VerificationKey) -> dict[str, Any]:
        if key.alg is not None and key.alg != alg:
            raise TokenInvalid("algorithm does not match key")
        family = "EC" if alg.startswith("ES") else "RSA"
        if key.kty != family or (family == "EC" and _ALG_CURVE.get(alg) != key.crv):
            raise TokenInvalid("algorithm does not match key")
        self.signature_verifications += 1
        try:
            payload = jwt.PyJWS().decode(token, key=key.key, algorithms=[alg])
            claims = json.loads(payload)
        except jwt.InvalidSignatureError as exc:
            raise TokenInvalid("bad signature") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise TokenInvalid("malformed token") from exc
        if not isinstance(claims, dict):
            raise TokenInvalid("malformed token")
        return claims

    def _check_claims(self, claims: Mapping[str, Any], trusted: TrustedIssuer) -> None:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in trusted.audiences for a in auds):
            raise TokenInvalid("wrong audience")
        now, skew = self._clock(), self._skew
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _is_number(exp):
            raise TokenInvalid("token has no expiry")
        if now >= exp + skew:
            raise TokenInvalid("token expired")
        if nbf is not None and (not _is_number(nbf) or nbf > now + skew):
            raise TokenInvalid("token not yet valid")
        if iat is not None and (not _is_number(iat) or iat > now + skew):
            raise TokenInvalid("token issued in the future")
        if trusted.tenant_ids is not None and claims.get("tid") not in trusted.tenant_ids:
            raise TokenInvalid("tenant not allowed")
        oid = claims.get("oid") or claims.get("sub")
        if not isinstance(oid, str) or not oid:
            raise TokenInvalid("token has no subject")

    async def _principal(self, claims: dict[str, Any], trusted: TrustedIssuer) -> Principal:
        overage = overage_source(claims) is not None
        if overage:
            if self._resolver is None:
                raise TokenInvalid("group overage could not be resolved")
            try:
                groups = await self._resolver.resolve(claims, trusted.ca_pem)
            except GroupResolutionError as exc:
                log.warning("group overage unresolved reason=%s", exc.reason)
                raise TokenInvalid("group overage could not be resolved") from exc
            except Exception as exc:  # a custom resolver's bug must still fail closed
                log.error("group resolver error=%s", type(exc).__name__)
                raise TokenInvalid("group overage could not be resolved") from exc
        else:
            raw = claims.get("groups", [])
            if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
                raise TokenInvalid("malformed groups claim")
            groups = raw
        upn = claims.get("upn") or claims.get("preferred_username") or claims.get("unique_name")
        tid = claims.get("tid")
        return Principal(
            oid=str(claims.get("oid") or claims.get("sub")),
            upn=upn if isinstance(upn, str) else None,
            tid=tid if isinstance(tid, str) else None,
            groups=tuple(groups),
            issuer=trusted.issuer,
            expires_at=float(claims["exp"]),
            claims=MappingProxyType(claims),
            has_group_overage=overage,
        )

    def clear_cache(self) -> None:
        """Forget every validated token (e.g. after a configuration change)."""
        self._cache.clear()

    async def close(self) -> None:
        """Close HTTP sessions (the validator's and the group resolver's)."""
        for jwks in self._jwks.values():
            await jwks.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
