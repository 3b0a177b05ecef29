"""The OIDC side of the header policy: which bearer tokens are ours to
validate, answered from the validator's own validated-token cache so a token's
signature is verified once, not per request.

The validator itself is ``identity.TokenValidator`` (docs/INTERFACES.md §5);
this module only needs its ``validate`` coroutine and its synchronous
``cached`` lookup, so it is typed by a Protocol.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from identity import token_digest

log = logging.getLogger("agent.kube_aad_proxy")

# Cached answers for tokens that are not ours (service-account tokens), so the
# pass-through path does not base64-decode and JSON-parse every request.
ISSUER_CACHE_SIZE = 10_000


class PrincipalLike(Protocol):
    """The parts of ``identity.Principal`` used here."""

    oid: str
    upn: str | None
    tid: str | None
    issuer: str
    groups: Sequence[str]
    expires_at: float
    claims: Mapping[str, Any]
    has_group_overage: bool


class TokenValidatorLike(Protocol):
    """The parts of ``identity.TokenValidator`` used here."""

    async def validate(self, token: str) -> Any:
        """A principal, or raise ``identity.TokenInvalid``."""
        ...

    def cached(self, digest: bytes) -> Any:
        """The principal of a token validated before and not expired, else None."""
        ...


# Cache key for a token (its SHA-256): the validator's own, so one key serves
# its validated-token cache and the not-ours cache here.
token_key = token_digest


def _peek_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 16384:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):  # hostile nesting too
        return None
    return claims if isinstance(claims, dict) else None


def peek_issuer(token: str) -> str | None:
    """``iss`` of a JWT without verifying it (to pick the path), else None."""
    claims = _peek_claims(token)
    iss = claims.get("iss") if claims is not None else None
    return iss if isinstance(iss, str) else None


def peek_audiences(token: str) -> frozenset[str]:
    """``aud`` values of a JWT without verifying it (to pick the path)."""
    claims = _peek_claims(token)
    aud = claims.get("aud") if claims is not None else None
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return frozenset(a for a in values if isinstance(a, str))


def audiences_of(validator: object) -> frozenset[str]:
    """Every ``aud`` a trusted issuer of ``validator`` accepts (its ``issuers``)."""
    out: set[str] = set()
    for item in getattr(validator, "issuers", None) or ():
        out.update(a for a in getattr(item, "audiences", ()) or () if isinstance(a, str))
    return frozenset(out)


def issuers_of(validator: object) -> frozenset[str]:
    """Trusted ``iss`` values of an ``identity.TokenValidator``.

    Reads ``issuers`` (or ``trusted_issuers``): strings or ``TrustedIssuer``
    objects with an ``issuer`` attribute, or a mapping keyed by ``iss``.
    """
    found: Iterable[object] = (
        getattr(validator, "issuers", None)
        or getattr(validator, "trusted_issuers", None)
        or ()
    )
    if isinstance(found, Mapping):
        found = list(found.keys())
    out = set()
    for item in found:
        out.add(item if isinstance(item, str) else str(getattr(item, "issuer", "")))
    out.discard("")
    return frozenset(out)


class _Lru:
    """A small bounded LRU dict."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._d: OrderedDict[bytes, Any] = OrderedDict()

    def get(self, key: bytes) -> Any:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: bytes, value: Any) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self._size:
            self._d.popitem(last=False)


class OidcGate:
    """Chooses the OIDC path for tokens from trusted issuers; validated
    principals come from the validator's cache (by token hash) until they expire.

    A token is ours when its ``iss`` is trusted, and also when it is addressed
    to one of our audiences whatever its ``iss``: such a token was minted for
    this service, so it is validated here (and refused: untrusted issuer)
    rather than passed on for the API server to judge. Service-account tokens
    carry the API server's audiences and still pass through.

    Args:
        validator: ``identity.TokenValidator``.
        trusted_issuers: ``iss`` values that select the OIDC path.
        trusted_audiences: ``aud`` values that select it too.
    """

    def __init__(self, validator: TokenValidatorLike, trusted_issuers: frozenset[str],
                 trusted_audiences: frozenset[str] = frozenset()) -> None:
        self.validator = validator
        self.trusted_issuers = trusted_issuers
        self.trusted_audiences = trusted_audiences
        self._not_ours = _Lru(ISSUER_CACHE_SIZE)
        #: validator calls made (the hot path must not grow this per request)
        self.validations = 0

    def is_ours(self, token: str, key: bytes) -> bool:
        """Whether ``token`` is a JWT from a trusted issuer (or for one of our
        audiences). Ask :meth:`cached` first: a validated token is ours."""
        if self._not_ours.get(key) is not None:
            return False
        ours = peek_issuer(token) in self.trusted_issuers or bool(
            self.trusted_audiences and peek_audiences(token) & self.trusted_audiences)
        if not ours:
            self._not_ours.put(key, True)
        return ours

    def retarget(self, validator: TokenValidatorLike, trusted_issuers: frozenset[str],
                 trusted_audiences: frozenset[str]) -> None:
        """Trust other issuers from now on (a configuration reload): tokens
        are validated by ``validator``; "not ours" answers are forgotten, since
        a newly trusted issuer's token may be among them."""
        self.validator = validator
        self.trusted_issuers = trusted_issuers
        self.trusted_audiences = trusted_audiences
        self._not_ours = _Lru(ISSUER_CACHE_SIZE)

    def cached(self, key: bytes) -> PrincipalLike | None:
        """The principal of a token validated before and not yet expired."""
        p: PrincipalLike | None = self.validator.cached(key)
        return p

    async def validate(self, token: str) -> PrincipalLike:
        """Validate (signature, claims, groups); the validator caches the principal.

        Raises:
            Whatever the validator raises (``TokenInvalid``, ``GroupResolutionError``).
        """
        self.validations += 1
        p: PrincipalLike = await self.validator.validate(token)
        # One line per validation (not per request): the hot path's proof
        # that a token's signature is checked once. Never the token itself.
        log.info("oidc token validated principal=%s groups=%d overage=%s validations=%d",
                 p.oid, len(p.groups), p.has_group_overage, self.validations)
        return p
