"""Authentication: the static admin token, client certificates signed by the
sandbox CA, and ServiceAccount JWTs the sandbox signs itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://kubernetes.default.svc"
API_AUDIENCES = ["https://kubernetes.default.svc"]
# Issuer of Secret-based (legacy, non-expiring) tokens, as in Kubernetes.
LEGACY_ISSUER = "kubernetes/serviceaccount"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class UserInfo:
    """An authenticated (or anonymous) identity."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``UserInfo`` shape of authentication.k8s.io."""
        out: dict[str, Any] = {"username": self.name}
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


class AuthenticationFailed(Exception):
    """Credentials were presented and are not valid (401)."""


def with_authenticated(groups: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Groups plus ``system:authenticated`` once."""
    out = list(groups)
    if AUTHENTICATED not in out:
        out.append(AUTHENTICATED)
    return tuple(out)


def anonymous() -> UserInfo:
    """The identity of a request without credentials."""
    return UserInfo(ANONYMOUS, groups=(UNAUTHENTICATED,))


# Looks up a ServiceAccount's uid (None = absent) and whether a Secret exists.
SaLookup = Callable[[str, str], str | None]
SecretLookup = Callable[[str, str], bool]


class Authenticator:
    """Turns request credentials into a :class:`UserInfo`."""

    def __init__(self, admin_token: str, sa_uid: SaLookup, secret_exists: SecretLookup) -> None:
        self.admin_token = admin_token
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._pub = self._key.public_key()
        self._kid = uuid.uuid4().hex
        self._sa_uid = sa_uid
        self._secret_exists = secret_exists

    @property
    def public_key_pem(self) -> bytes:
        """The ServiceAccount token verification key (PEM)."""
        return self._pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def authenticate(self, bearer: str | None, peer_cert: dict[str, Any] | None) -> UserInfo:
        """Certificate first, then the bearer token, else anonymous.

        Raises:
            AuthenticationFailed: a bearer token was sent and is not valid.
        """
        if peer_cert:
            user = _user_from_cert(peer_cert)
            if user is not None:
                return user
        if bearer is None:
            return anonymous()
        if bearer == self.admin_token:
            return UserInfo("admin", groups=("system:masters", AUTHENTICATED))
        return self._service_account(bearer)

    def _service_account(self, token: str) -> UserInfo:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            if unverified.get("iss") == LEGACY_ISSUER:
                claims = jwt.decode(token, self._pub, algorithms=["ES256"], issuer=LEGACY_ISSUER,
                                    options={"verify_aud": False, "require": ["sub"]})
                ns = claims["kubernetes.io/serviceaccount/namespace"]
                name = claims["kubernetes.io/serviceaccount/service-account.name"]
                uid = claims["kubernetes.io/serviceaccount/service-account.uid"]
                secret = claims["kubernetes.io/serviceaccount/secret.name"]
                if not self._secret_exists(ns, secret):
                    raise AuthenticationFailed("secret gone")
                extra: dict[str, list[str]] = {}
            else:
                claims = jwt.decode(token, self._pub, algorithms=["ES256"], issuer=ISSUER,
                                    audience=API_AUDIENCES, options={"require": ["exp", "sub"]})
                k8s = claims["kubernetes.io"]
                ns, name, uid = k8s["namespace"], k8s["serviceaccount"]["name"], k8s["serviceaccount"]["uid"]
                extra = {"authentication.kubernetes.io/credential-id": [f"JTI={claims.get('jti', '')}"]}
        except (jwt.PyJWTError, KeyError, TypeError) as exc:
            raise AuthenticationFailed("invalid token") from exc
        if self._sa_uid(ns, name) != uid:
            raise AuthenticationFailed("service account gone")
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{ns}", AUTHENTICATED)
        return UserInfo(f"system:serviceaccount:{ns}:{name}", uid=uid, groups=groups, extra=extra)

    def mint_bound(self, namespace: str, name: str, sa_uid: str, *, audiences: list[str],
                   expiration_seconds: int, bound: dict[str, Any] | None = None) -> tuple[str, int]:
        """A TokenRequest token; returns (token, expiry as unix seconds)."""
        now = int(time.time())
        exp = now + expiration_seconds
        k8s: dict[str, Any] = {"namespace": namespace, "serviceaccount": {"name": name, "uid": sa_uid}}
        if bound:
            k8s[bound["kind"].lower()] = {"name": bound.get("name", ""), "uid": bound.get("uid", "")}
        claims = {
            "aud": audiences or API_AUDIENCES, "exp": exp, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": str(uuid.uuid4()), "kubernetes.io": k8s,
            "sub": f"system:serviceaccount:{namespace}:{name}",
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid})
        return token, exp

    def mint_legacy(self, namespace: str, name: str, sa_uid: str, secret_name: str) -> str:
        """A non-expiring token for a ``kubernetes.io/service-account-token`` Secret."""
        claims = {
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret_name,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
            "sub": f"system:serviceaccount:{namespace}:{name}",
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid})


def _user_from_cert(cert: dict[str, Any]) -> UserInfo | None:
    """CN is the user, each O a group (the ssl module's getpeercert() form)."""
    cn, orgs = "", []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    if not cn:
        return None
    return UserInfo(cn, groups=with_authenticated(orgs))
