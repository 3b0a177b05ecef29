"""Signing keys of one trusted issuer: OIDC discovery, then its JWKS, cached.

Why the refresh is rate limited: a token names its key with ``kid``, and an
unknown ``kid`` is how a validator learns that the issuer rotated its keys. But
the ``kid`` is attacker controlled, so a flood of tokens with random kids would
turn every validator into a amplifier against the issuer. Hence: at most one
network refresh per ``min_refresh_interval`` per issuer, and callers that arrive
while a refresh is running wait for that one instead of starting their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from identity.http import DEFAULT_HTTP_TIMEOUT, FetchError, fetch_json, ssl_context

log = logging.getLogger("identity")

# Rotation is rare (Entra: weeks), so one refresh per 30 s on an unknown kid
# picks up a new key fast enough while capping load on the issuer at 2/min.
DEFAULT_MIN_REFRESH_INTERVAL = 30.0
# Keys we already hold are re-fetched at most hourly, so a key the issuer
# withdrew (compromise) stops being accepted within the hour.
DEFAULT_MAX_KEY_AGE = 3600.0
# A JWKS with more keys than this is not a real issuer's.
MAX_KEYS = 64
# Below this an RSA key is too weak to trust a signature from it.
MIN_RSA_BITS = 2048

_EC_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


@dataclass(frozen=True)
class VerificationKey:
    """One public key from a JWKS, parsed once when fetched."""

    kid: str
    kty: str  # "RSA" or "EC"
    crv: str | None  # EC curve name, e.g. "P-256"
    alg: str | None  # the JWK's own "alg" if it pins one
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def parse_jwk(jwk: Any) -> VerificationKey | None:
    """A :class:`VerificationKey` from a JWK dict, or None if it is unusable
    for signature checks (no kid, wrong ``use``, unknown type, weak key)."""
    if not isinstance(jwk, dict):
        return None
    kid, kty, use = jwk.get("kid"), jwk.get("kty"), jwk.get("use", "sig")
    alg = jwk.get("alg")
    if not isinstance(kid, str) or not kid or use != "sig":
        return None
    if alg is not None and not isinstance(alg, str):
        return None
    try:
        if kty == "RSA":
            public = RSAAlgorithm.from_jwk(jwk)
            if not isinstance(public, rsa.RSAPublicKey) or public.key_size < MIN_RSA_BITS:
                return None
            return VerificationKey(kid, "RSA", None, alg, public)
        if kty == "EC" and jwk.get("crv") in _EC_CURVES:
            public_ec = ECAlgorithm.from_jwk(jwk)
            if not isinstance(public_ec, ec.EllipticCurvePublicKey):
                return None
            return VerificationKey(kid, "EC", str(jwk["crv"]), alg, public_ec)
    except Exception:  # malformed numbers, bad points: the key is just unusable
        return None
    return None


class JwksCache:
    """The keys of one issuer, discovered and refreshed on demand.

    Call :meth:`get` with a token's ``kid``; it returns the key, refreshing
    (within the rate limit) when the kid is unknown or the keys are old.

    Args:
        issuer: exact issuer URL; discovery is ``<issuer>/.well-known/openid-configuration``.
        session: returns the shared aiohttp session (created lazily by the owner).
        ca_pem: CA to trust for this issuer, else the system store.
        discovery_url: the discovery document, if not at the default place.
        jwks_uri: fixed JWKS location (no discovery).
        min_refresh_interval: seconds between two network refreshes.
        max_key_age: seconds after which known keys are re-fetched.
        monotonic: clock for the two intervals (tests inject one).
    """

    def __init__(
        self,
        issuer: str,
        session: Callable[[], aiohttp.ClientSession],
        *,
        ca_pem: bytes | str | None = None,
        discovery_url: str | None = None,
        jwks_uri: str | None = None,
        min_refresh_interval: float = DEFAULT_MIN_REFRESH_INTERVAL,
        max_key_age: float = DEFAULT_MAX_KEY_AGE,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._session = session
        self._ssl = ssl_context(ca_pem)
        self._min_interval = min_refresh_interval
        self._max_age = max_key_age
        self._timeout = http_timeout
        self._now = monotonic
        self._keys: dict[str, VerificationKey] = {}
        self._discovery_url = discovery_url or issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._fixed_jwks_uri = jwks_uri
        self._jwks_uri: str | None = jwks_uri
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        #: refreshes that went to the network (successful or not)
        self.refresh_count = 0
        #: short reason of the last failed refresh, None after a success
        self.last_error: str | None = None

    @property
    def kids(self) -> list[str]:
        """The key ids currently held."""
        return list(self._keys)

    async def get(self, kid: str) -> VerificationKey | None:
        """The key named ``kid``, or None if the issuer does not publish it
        (or it cannot be fetched right now). Never raises for network errors."""
        key = self._keys.get(kid)
        stale = self._fetched_at is None or self._now() - self._fetched_at >= self._max_age
        if key is not None and not stale:
            return key
        await self._refresh_if_allowed()
        return self._keys.get(kid)

    async def _refresh_if_allowed(self) -> None:
        if self._inflight is None:
            now = self._now()
            if self._last_attempt is not None and now - self._last_attempt < self._min_interval:
                return
            self._last_attempt = now
            task = asyncio.ensure_future(self._refresh())
            task.add_done_callback(self._refresh_done)
            self._inflight = task
        # shield: one caller giving up must not cancel the refresh the others wait on
        await asyncio.shield(self._inflight)

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def close(self) -> None:
        """Cancel a refresh in flight (the owner is shutting down)."""
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _refresh(self) -> None:
        self.refresh_count += 1
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            try:
                doc = await fetch_json(
                    self._session(), "GET", self._jwks_uri, ssl_ctx=self._ssl, timeout=self._timeout
                )
            except FetchError:
                # re-discover next time: the issuer may have moved it
                self._jwks_uri = self._fixed_jwks_uri
                raise
            keys = self._parse_jwks(doc)
        except FetchError as exc:
            self.last_error = exc.reason
            log.warning("jwks refresh failed issuer=%s reason=%s", self.issuer, exc.reason)
            return
        except Exception as exc:  # fail closed: waiters get "no key", never a crash
            self.last_error = type(exc).__name__
            log.error("jwks refresh error issuer=%s error=%s", self.issuer, type(exc).__name__)
            return
        self._keys = keys
        self._fetched_at = self._now()
        self.last_error = None
        log.info("jwks refreshed issuer=%s kids=%s", self.issuer, ",".join(sorted(keys)))

    async def _discover(self) -> str:
        doc = await fetch_json(self._session(), "GET", self._discovery_url, ssl_ctx=self._ssl, timeout=self._timeout)
        if not isinstance(doc, dict):
            raise FetchError("discovery document is not an object")
        # OIDC Discovery 1.0 §4.3: the document's issuer must equal the one we asked.
        if doc.get("issuer") != self.issuer:
            raise FetchError("discovery issuer mismatch")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme != urlsplit(self.issuer).scheme:
            raise FetchError("discovery has no usable jwks_uri")
        return jwks_uri

    @staticmethod
    def _parse_jwks(doc: Any) -> dict[str, VerificationKey]:
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise FetchError("JWKS has no keys array")
        keys: dict[str, VerificationKey] = {}
        for jwk in doc["keys"][:MAX_KEYS]:
            parsed = parse_jwk(jwk)
            if parsed is not None:
                keys[parsed.kid] = parsed
        return keys
