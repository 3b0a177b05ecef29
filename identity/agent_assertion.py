"""Agent assertions: how an agent proves which cluster it is (``private_key_jwt`` style).

At registration the relay stores the agent's self-signed certificate
(``agentPublicKeyCertificate``); the agent keeps the private key. On every
connect the agent signs a short-lived JWT:

- header ``alg`` ES256 (EC P-256 key) or RS256 (RSA key), ``typ`` JWT;
- ``iss`` = ``sub`` = the cluster id ``<resourceGroup>/<name>``;
- ``aud`` = the relay's agent endpoint URL (``https://relay/agent/v1/connect``);
- ``iat``, ``nbf``, ``exp`` (at most ``MAX_LIFETIME`` ahead), and a random ``jti``.

The relay reads the claimed cluster id unverified (:func:`unverified_cluster_id`),
looks up that cluster's certificate, then :meth:`AgentAssertionVerifier.verify`
checks signature, claims and that the ``jti`` was never seen before. Signing
uses PyJWT; verification is done here, for the one form an agent sends (it
runs on every connect, and PyJWT's general path cost more than the signature
check itself). Because the
signature is checked with the claimed cluster's own key, one agent's key can
never speak for another cluster.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from identity.errors import TokenInvalid

# Ten minutes: long enough for clock drift and a slow handshake, short enough
# that a leaked assertion is soon useless (and the replay cache stays small).
MAX_LIFETIME = 600
# An assertion header or body larger than this is not one of ours.
MAX_TOKEN_LENGTH = 8192
# Assertions remembered at once (each until its exp + skew). At the relay's
# default admission rate (200 handshakes/s) and the agents' 120 s lifetime
# about 36,000 are live; past this bound new assertions are refused (never
# evicted early: forgetting a live jti would allow its replay). ~200 bytes each.
MAX_REPLAY_ENTRIES = 200_000
# Parsed agent public keys kept (one per registered cluster in use).
MAX_CACHED_KEYS = 10_000

#: Where agents dial the relay; an assertion's ``aud`` is this endpoint's URL.
AGENT_CONNECT_PATH = "/agent/v1/connect"


def agent_audience(relay_url: str) -> str:
    """The ``aud`` an agent signs for the relay at ``relay_url`` (any scheme:
    agents always dial over TLS): ``https://host[:port][/prefix]/agent/v1/connect``."""
    parts = urlsplit(relay_url.rstrip("/"))
    return f"https://{parts.netloc}{parts.path}{AGENT_CONNECT_PATH}"


def agent_audiences(relay_url: str) -> list[str]:
    """Every ``aud`` the relay at ``relay_url`` accepts: :func:`agent_audience`
    and its ``wss://`` spelling (the URL the agent actually dialled)."""
    https = agent_audience(relay_url)
    return [https, "wss" + https[len("https"):]]


def _algorithm(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise TokenInvalid("agent key must be EC P-256 or RSA")
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    raise TokenInvalid("agent key must be EC P-256 or RSA")


def sign_agent_assertion(
    private_key_pem: bytes, cluster_id: str, audience: str, lifetime: int = 120
) -> str:
    """Sign a fresh assertion for ``cluster_id``; call once per connect.

    Args:
        private_key_pem: the agent's private key (PEM, unencrypted).
        cluster_id: ``<resourceGroup>/<name>``.
        audience: the relay's agent endpoint URL.
        lifetime: seconds until ``exp`` (at most ``MAX_LIFETIME``).

    Returns:
        The compact JWS.

    Raises:
        TokenInvalid: the key cannot be loaded or is of an unsupported type.
    """
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        raise TokenInvalid("agent private key is not a readable unencrypted PEM key") from None
    alg = _algorithm(key)
    now = int(time.time())
    claims = {
        "iss": cluster_id,
        "sub": cluster_id,
        "aud": audience,
        "iat": now,
        "nbf": now - 5,
        "exp": now + min(int(lifetime), MAX_LIFETIME),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": "JWT"})  # type: ignore[arg-type]


def unverified_cluster_id(token: str) -> str:
    """The cluster id an assertion *claims* (``iss``), before any verification;
    use it only to pick the certificate to verify with.

    Raises:
        TokenInvalid: not a JWT, or no string ``iss``.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("malformed assertion")
    # Only the payload is read here (the whole token is checked by verify):
    # one base64 and one JSON decode instead of a second full JWT parse per connect.
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("malformed assertion")
    try:
        payload = parts[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise TokenInvalid("malformed assertion") from None
    if not isinstance(claims, dict):
        raise TokenInvalid("malformed assertion")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise TokenInvalid("assertion has no issuer")
    return iss


class ReplayCache:
    """``jti``s seen and not yet expired, ordered by expiry.

    ``add`` is amortised O(log n): a set answers "seen?", a heap ordered by
    expiry lets each call drop exactly the entries that have expired (each
    entry is pushed and popped once), never scanning the whole cache.
    Bounded by ``max_entries``: when full of live entries, ``add`` refuses.
    """

    def __init__(self, max_entries: int = MAX_REPLAY_ENTRIES) -> None:
        self.max_entries = max_entries
        self._seen: set[tuple[str, str]] = set()
        self._by_expiry: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def forget_expired(self, now: float) -> None:
        """Drop every entry whose expiry is before ``now``."""
        heap = self._by_expiry
        while heap and heap[0][0] < now:
            _, key = heapq.heappop(heap)
            self._seen.discard(key)

    def add(self, key: tuple[str, str], forget_at: float, now: float) -> None:
        """Remember ``key`` until ``forget_at``.

        Raises:
            TokenInvalid: ``key`` was seen already, or the cache is full.
        """
        self.forget_expired(now)
        if key in self._seen:
            raise TokenInvalid("assertion replayed")
        if len(self._seen) >= self.max_entries:
            raise TokenInvalid("relay replay cache is full; retry shortly")
        self._seen.add(key)
        heapq.heappush(self._by_expiry, (forget_at, key))


# The verification of one assertion, without PyJWT's general machinery (its
# per-character alphabet scan, option merging and claim validators cost more
# than the ECDSA verify itself: 0.33 ms against 0.14 ms per connect). Only the
# compact JWS form with ES256 or RS256, the algorithm fixed by the registered
# key; header ``crit`` (extensions) is refused, since none is understood.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti")


def _segment(text: str) -> bytes:
    """One base64url segment (unpadded, as JWS writes it), or TokenInvalid."""
    if len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        raise TokenInvalid("malformed assertion")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise TokenInvalid("malformed assertion") from None
    if not isinstance(value, dict):
        raise TokenInvalid("malformed assertion")
    return value


def _signature_valid(public_key: Any, alg: str, signed: bytes, signature: bytes) -> bool:
    try:
        if alg == "ES256":
            # JWS carries r || s (32 bytes each); cryptography verifies DER.
            if len(signature) != 64:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                       int.from_bytes(signature[32:], "big"))
            public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        else:
            public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _verified_claims(token: str, public_key: Any, alg: str) -> dict[str, Any]:
    """The claims of ``token`` once its header names ``alg`` and its signature
    verifies with ``public_key``; every required claim present.

    Raises:
        TokenInvalid: anything else.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("malformed assertion")
    header = _json_object(_segment(parts[0]))
    if "crit" in header:
        raise TokenInvalid("malformed assertion")
    if header.get("alg") != alg:
        raise TokenInvalid("assertion algorithm does not match the registered key")
    payload, signature = _segment(parts[1]), _segment(parts[2])
    # (both segments passed the base64url alphabet check: ASCII)
    if not _signature_valid(public_key, alg, f"{parts[0]}.{parts[1]}".encode("ascii"), signature):
        raise TokenInvalid("assertion signature does not match the registered key")
    claims = _json_object(payload)
    if any(name not in claims for name in _REQUIRED_CLAIMS):
        raise TokenInvalid("assertion lacks a required claim")
    return claims


def _number(value: Any) -> float:
    """A NumericDate: a finite JSON number (not a string, not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenInvalid("malformed assertion")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise TokenInvalid("malformed assertion") from None
    if not math.isfinite(number):
        raise TokenInvalid("malformed assertion")
    return number


def _check_times(claims: dict[str, Any], now: float, skew: float) -> None:
    """``exp`` not past, ``iat`` and ``nbf`` (if present) not ahead, each by ``skew``."""
    if _number(claims["exp"]) <= now - skew:
        raise TokenInvalid("assertion expired")
    if _number(claims["iat"]) > now + skew:
        raise TokenInvalid("assertion not yet valid")
    if "nbf" in claims and _number(claims["nbf"]) > now + skew:
        raise TokenInvalid("assertion not yet valid")


def _check_audience(claims: dict[str, Any], audiences: Sequence[str]) -> None:
    aud = claims["aud"]
    listed = [aud] if isinstance(aud, str) else aud
    if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
        raise TokenInvalid("malformed assertion")
    if not any(a in audiences for a in listed):
        raise TokenInvalid("assertion audience is not this relay")


class AgentAssertionVerifier:
    """Verifies agent assertions for one relay and refuses replays.

    The ``jti`` cache (:class:`ReplayCache`) is in memory, so it protects one
    relay process; entries leave it when their assertion expires.
    """

    def __init__(
        self, audience: str | Sequence[str], *, clock_skew: int = 60, max_lifetime: int = MAX_LIFETIME,
        max_replay_entries: int = MAX_REPLAY_ENTRIES,
    ) -> None:
        self.audiences = [audience] if isinstance(audience, str) else list(audience)
        self.clock_skew = clock_skew
        self.max_lifetime = max_lifetime
        self.replay_cache = ReplayCache(max_replay_entries)
        # Registered certificate -> its public key: parsing the PEM is a
        # measurable part of a connect. Bounded; an unknown PEM is just parsed.
        self._keys: OrderedDict[bytes, Any] = OrderedDict()

    def _public_key(self, pem: bytes) -> Any:
        key = self._keys.get(pem)
        if key is None:
            try:
                key = x509.load_pem_x509_certificate(pem).public_key()
            except ValueError:
                raise TokenInvalid("registered agent certificate is unreadable") from None
            self._keys[pem] = key
            if len(self._keys) > MAX_CACHED_KEYS:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(pem)
        return key

    def verify(self, token: str, certificate_pem: bytes | str) -> str:
        """Check ``token`` against the cluster's registered certificate.

        Args:
            token: the compact JWS from ``Authorization: Bearer``.
            certificate_pem: ``agentPublicKeyCertificate`` of the claimed cluster.

        Returns:
            The verified cluster id (``iss``).

        Raises:
            TokenInvalid: bad signature, wrong audience, expired, too long-lived,
                ``iss`` != ``sub``, or a ``jti`` already seen.
        """
        pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
        public_key = self._public_key(pem)
        alg = _algorithm(public_key)
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("malformed assertion")
        claims = _verified_claims(token, public_key, alg)
        now = time.time()
        _check_times(claims, now, self.clock_skew)
        _check_audience(claims, self.audiences)
        iss, jti, exp = claims["iss"], claims["jti"], _number(claims["exp"])
        if not isinstance(iss, str) or claims["sub"] != iss:
            raise TokenInvalid("assertion subject differs from issuer")
        if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
            raise TokenInvalid("assertion jti is malformed")
        if exp - now > self.max_lifetime + self.clock_skew:
            raise TokenInvalid("assertion lifetime too long")
        self.replay_cache.add((iss, jti), exp + self.clock_skew, now)
        return str(iss)

