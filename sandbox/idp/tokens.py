"""Entra-v2-shaped access tokens: claims, signing, refresh tokens.

Claims follow Microsoft's v2 access-token reference: ``iss``, ``aud``,
``tid``, ``oid``, ``sub`` (pairwise per client for users, as Entra does, so
code that confuses ``sub`` with ``oid`` shows up in tests), ``upn`` /
``preferred_username``, ``name``, ``groups``, ``idtyp``, ``azp``, ``ver``,
``exp``/``nbf``/``iat``. More than 200 groups becomes the overage form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from sandbox.idp.keys import SigningKey, SigningKeys
from sandbox.idp.users import GROUPS_CLAIM_LIMIT, Directory, ServicePrincipal, User

DEFAULT_AUDIENCE = "api://cluster-connect"
DEFAULT_LIFETIME = 3600  # Entra's default access-token lifetime is 60-90 min
MAX_LIFETIME = 24 * 3600
REFRESH_TOKEN_LIFETIME = 24 * 3600
# Bounds the in-memory refresh-token table of a long-running demo issuer.
MAX_REFRESH_TOKENS = 10_000


class ScopeError(ValueError):
    """The requested scope names no resource."""


def audience_of(scope: str) -> tuple[str, str]:
    """``(aud, scp)`` for an OAuth2 scope string.

    ``api://cluster-connect/.default`` -> ``("api://cluster-connect", "")``;
    ``api://x/user_impersonation`` -> ``("api://x", "user_impersonation")``;
    OIDC scopes (openid, profile, email, offline_access) are ignored.
    """
    for item in scope.split():
        if item in ("openid", "profile", "email", "offline_access"):
            continue
        resource, sep, permission = item.rpartition("/")
        if sep and resource:
            return resource, "" if permission == ".default" else permission
    raise ScopeError("scope names no resource (use e.g. api://cluster-connect/.default)")


_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _b64json(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _pairwise_sub(oid: str, client_id: str) -> str:
    digest = hashlib.sha256(f"{oid}:{client_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class TokenMinter:
    """Builds and signs tokens for one issuer.

    Args:
        directory: users and service principals.
        keys: signing keys.
        issuer: the ``iss`` value.
        base_url: scheme://host:port, where the member-groups endpoint lives.
        default_client_id: ``azp`` of user tokens when the request names no client.
    """

    def __init__(
        self, directory: Directory, keys: SigningKeys, issuer: str, base_url: str, default_client_id: str
    ) -> None:
        self.directory = directory
        self.keys = keys
        self.issuer = issuer
        self.base_url = base_url
        self.default_client_id = default_client_id

    def _common(self, audience: str, lifetime: int) -> dict[str, Any]:
        now = int(time.time())
        return {
            "aud": audience,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": self.directory.tenant_id,
            "uti": secrets.token_urlsafe(16),
            "ver": "2.0",
        }

    def _groups(self, claims: dict[str, Any], oid: str, groups: tuple[str, ...]) -> None:
        if len(groups) > GROUPS_CLAIM_LIMIT:
            claims["_claim_names"] = {"groups": "src1"}
            endpoint = f"{self.base_url}/v1.0/users/{oid}/getMemberObjects"
            claims["_claim_sources"] = {"src1": {"endpoint": endpoint}}
        elif groups:
            claims["groups"] = list(groups)

    def user_claims(
        self, user: User, audience: str, lifetime: int, *, client_id: str | None = None, scp: str = ""
    ) -> dict[str, Any]:
        """Claims of a delegated (user) access token."""
        azp = client_id or self.default_client_id
        claims = self._common(audience, lifetime)
        claims.update(
            {
                "azp": azp,
                "azpacr": "0",
                "idtyp": "user",
                "name": user.name,
                "oid": user.oid,
                "preferred_username": user.username,
                "upn": user.username,
                "scp": scp or "user_impersonation",
                "sub": _pairwise_sub(user.oid, azp),
            }
        )
        self._groups(claims, user.oid, user.groups)
        return claims

    def app_claims(self, app: ServicePrincipal, audience: str, lifetime: int) -> dict[str, Any]:
        """Claims of an application (client-credentials) access token."""
        claims = self._common(audience, lifetime)
        claims.update(
            {
                "azp": app.client_id,
                "azpacr": "1",
                "idtyp": "app",
                "oid": app.oid,
                "roles": [],
                "sub": app.oid,
            }
        )
        self._groups(claims, app.oid, app.groups)
        return claims

    @property
    def v1_issuer(self) -> str:
        """The ``iss`` of v1 tokens: Entra's, for an API whose manifest has
        ``accessTokenAcceptedVersion`` null or 1 (not a URL this issuer serves;
        its discovery document is at ``/<tenant>/.well-known/openid-configuration``)."""
        return f"https://sts.windows.net/{self.directory.tenant_id}/"

    def as_v1(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The v1 shape of v2 ``claims``: ``ver`` 1.0, the sts.windows.net
        ``iss``, ``appid``/``appidacr`` for ``azp``/``azpacr``, and for users
        ``upn`` and ``unique_name`` instead of ``preferred_username``."""
        v1 = dict(claims, ver="1.0", iss=self.v1_issuer)
        v1["appid"], v1["appidacr"] = v1.pop("azp"), v1.pop("azpacr")
        username = v1.pop("preferred_username", None)
        if username is not None:
            v1["upn"] = v1["unique_name"] = username
        return v1

    def sign(
        self,
        claims: dict[str, Any],
        *,
        headers: dict[str, Any] | None = None,
        key: SigningKey | Any = None,
        algorithm: str = "RS256",
    ) -> str:
        """Sign ``claims``. ``key``: a :class:`SigningKey` (default: the
        current one, whose ``kid`` goes in the header), any key PyJWT accepts
        (bytes or str for HS256/384/512: any secret, even a public-key PEM),
        or ignored for ``algorithm="none"``."""
        hdr: dict[str, Any] = {"typ": "JWT"}
        if key is None:
            key = self.keys.current
        if isinstance(key, SigningKey):
            hdr["kid"] = key.kid
            key = key.private_key
        hdr.update(headers or {})
        # By hand for none and HMAC: PyJWT rightly refuses a PEM as an HMAC
        # secret, but attack tests need exactly that ("HS256 keyed with the public key").
        if algorithm == "none":
            hdr["alg"] = "none"
            return ".".join(_b64json(p) for p in (hdr, claims)) + "."
        if algorithm in _HMAC and isinstance(key, bytes | str):
            hdr["alg"] = algorithm
            signing_input = ".".join(_b64json(p) for p in (hdr, claims))
            secret = key.encode() if isinstance(key, str) else key
            mac = hmac.new(secret, signing_input.encode(), _HMAC[algorithm]).digest()
            return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        return jwt.encode(claims, key, algorithm=algorithm, headers=hdr)

    def verify_own(self, token: str) -> dict[str, Any] | None:
        """Claims of a token this issuer signed with a published key and that
        has not expired; None otherwise. Any audience is accepted (the
        member-groups endpoint plays Graph, which trusts its own tenant's tokens)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.find(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=["RS256"],
                issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "iss"]},
            )
            return claims
        except jwt.PyJWTError:
            return None


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for."""

    user_oid: str
    client_id: str
    scope: str
    lifetime: int | None
    expires: float


class RefreshTokens:
    """Opaque refresh tokens held in memory (the demo does not need them to
    survive a restart). Old tokens stay valid after use, as with Entra."""

    def __init__(self) -> None:
        self._grants: dict[str, RefreshGrant] = {}

    def issue(self, user: User, client_id: str, scope: str, lifetime: int | None) -> str:
        """A new refresh token for ``user``."""
        now = time.time()
        if len(self._grants) >= MAX_REFRESH_TOKENS:
            self._grants = {t: g for t, g in self._grants.items() if g.expires > now}
            while len(self._grants) >= MAX_REFRESH_TOKENS:
                self._grants.pop(next(iter(self._grants)))
        token = "rt." + secrets.token_urlsafe(32)
        self._grants[token] = RefreshGrant(user.oid, client_id, scope, lifetime, now + REFRESH_TOKEN_LIFETIME)
        return token

    def redeem(self, token: str) -> RefreshGrant | None:
        """The grant behind ``token`` if it is known and not expired."""
        grant = self._grants.get(token)
        if grant is None or grant.expires <= time.time():
            return None
        return grant

    def revoke_user(self, oid: str) -> None:
        """Forget every refresh token of a user."""
        self._grants = {t: g for t, g in self._grants.items() if g.user_oid != oid}


def new_device_code() -> tuple[str, str]:
    """A (device_code, user_code) pair for the device authorization grant."""
    user_code = "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(8))
    return str(uuid.uuid4()) + secrets.token_urlsafe(16), user_code
