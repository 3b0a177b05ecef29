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
checks signature, claims and that the ``jti`` was never seen before. Because the
signature is checked with the claimed cluster's own key, one agent's key can
never speak for another cluster.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from identity.errors import TokenInvalid

# Ten minutes: long enough for clock drift and a slow handshake, short enough
# that a leaked assertion is soon useless (and the replay cache stays small).
MAX_LIFETIME = 600
# An assertion header or body larger than this is not one of ours.
MAX_TOKEN_LENGTH = 8192


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
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenInvalid("malformed assertion") from None
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise TokenInvalid("assertion has no issuer")
    return iss


class AgentAssertionVerifier:
    """Verifies agent assertions for one relay and refuses replays.

    The ``jti`` cache is in memory, so it protects one relay process; entries
    leave it when their assertion expires.
    """

    def __init__(
        self, audience: str | Sequence[str], *, clock_skew: int = 60, max_lifetime: int = MAX_LIFETIME
    ) -> None:
        self.audiences = [audience] if isinstance(audience, str) else list(audience)
        self.clock_skew = clock_skew
        self.max_lifetime = max_lifetime
        self._seen: dict[tuple[str, str], float] = {}

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, exp in self._seen.items() if exp + self.clock_skew < now]:
            del self._seen[key]

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
        try:
            public_key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise TokenInvalid("registered agent certificate is unreadable") from None
        alg = _algorithm(public_key)
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("malformed assertion")
        try:
            claims = jwt.decode(
                token,
                public_key,  # type: ignore[arg-type]
                algorithms=[alg],
                audience=self.audiences,
                leeway=self.clock_skew,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("assertion expired") from None
        except jwt.InvalidAudienceError:
            raise TokenInvalid("assertion audience is not this relay") from None
        except jwt.InvalidAlgorithmError:
            raise TokenInvalid("assertion algorithm does not match the registered key") from None
        except jwt.InvalidSignatureError:
            raise TokenInvalid("assertion signature does not match the registered key") from None
        except jwt.MissingRequiredClaimError:
            raise TokenInvalid("assertion lacks a required claim") from None
        except jwt.ImmatureSignatureError:
            raise TokenInvalid("assertion not yet valid") from None
        except jwt.PyJWTError:
            raise TokenInvalid("malformed assertion") from None
        iss, jti, exp = claims["iss"], claims["jti"], float(claims["exp"])
        if claims["sub"] != iss:
            raise TokenInvalid("assertion subject differs from issuer")
        if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
            raise TokenInvalid("assertion jti is malformed")
        now = time.time()
        if exp - now > self.max_lifetime + self.clock_skew:
            raise TokenInvalid("assertion lifetime too long")
        self._forget_expired(now)
        if (iss, jti) in self._seen:
            raise TokenInvalid("assertion replayed")
        self._seen[(iss, jti)] = exp
        return str(iss)
