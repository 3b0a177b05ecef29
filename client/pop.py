"""The client's side of proof-of-possession (docs/pop.md): the key pair kept
beside the token cache, ``req_cnf`` for token requests, and the signed HTTP
request (SHR) that ``arcctl get-token --pop`` prints.

Imported only for ``--pop``: it pulls in cryptography and pyjwt, which the
lean ``arcctl get-token`` path (client/arcctl_entry.py) must not load.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs import load_private_key, write_secret_file
from client.auth import CachedTokenSource, Token, token_from_login
from client.config import AuthConfig
from client.errors import ConfigError

__all__ = ["SHR_LIFETIME", "PopKey", "bound_token", "jwk_thumbprint", "key_path", "load_or_create_key",
           "pop_form", "sign_shr"]

# How long kubectl may reuse one SHR (its ExecCredential expiry): under
# kube-aad-proxy's default freshness window (5 min) so kubectl asks for a new
# one before the cluster would refuse it.
SHR_LIFETIME = 240.0
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of a public JWK."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


class PopKey:
    """The user's PoP key pair (RSA -> RS256, P-256 -> ES256).

    Args:
        private_key: an RSA or P-256 private key.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self.private_key = private_key
        if isinstance(private_key, rsa.RSAPrivateKey):
            pub = private_key.public_key().public_numbers()
            self.alg = "RS256"
            self.jwk = {"e": _uint(pub.e), "kty": "RSA", "n": _uint(pub.n)}
        elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
            pt = private_key.public_key().public_numbers()
            self.alg = "ES256"
            self.jwk = {"crv": "P-256", "kty": "EC", "x": _uint(pt.x, 32), "y": _uint(pt.y, 32)}
        else:
            raise ConfigError("the proof-of-possession key must be RSA or EC P-256: "
                              "delete it and run arcctl get-token --pop again to create one")
        self.key_id = jwk_thumbprint(self.jwk)

    def req_cnf(self) -> str:
        """``req_cnf`` for a token request (base64url of ``{"kid": thumbprint}``, as MSAL sends it)."""
        return _b64url(json.dumps({"kid": self.key_id}, separators=(",", ":")).encode())


def key_path() -> Path:
    """Where the PoP key lives: beside the token cache, mode 0600."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cluster-connect" / "pop-key.pem"


def load_or_create_key(path: Path | None = None) -> PopKey:
    """The user's PoP key; a new P-256 key is created (0600) on first use.

    Raises:
        ConfigError: the file exists but is no usable private key.
    """
    where = path or key_path()
    try:
        pem = where.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        from cryptography.hazmat.primitives import serialization

        where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret_file(where, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        return PopKey(key)
    except OSError as err:
        raise ConfigError(f"cannot read the proof-of-possession key {where} ({err.strerror}): "
                          "fix its permissions or delete it") from None
    try:
        loaded = load_private_key(pem)
    except (ValueError, TypeError):
        raise ConfigError(f"{where} is not an unencrypted PEM private key: delete it and run "
                          "arcctl get-token --pop again to create one") from None
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{where} is not an RSA or EC key: delete it and run arcctl get-token --pop again")
    return PopKey(loaded)


def sign_shr(key: PopKey, access_token: str, target: str, *, ts: int | None = None,
             nonce: str | None = None) -> str:
    """The signed HTTP request carrying ``access_token`` to the cluster ``target``.

    Header and payload are JSON with sorted keys and no spaces (docs/pop.md),
    so a fixed key, ``ts`` and ``nonce`` give a fixed token under RS256.
    """
    payload: dict[str, Any] = {
        "at": access_token,
        "cnf": {"jwk": key.jwk},
        "nonce": nonce if nonce is not None else secrets.token_urlsafe(24),
        "ts": int(time.time()) if ts is None else ts,
        "u": target,
    }
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return jwt.PyJWS().encode(body, key.private_key, algorithm=key.alg,
                              headers={"kid": key.key_id, "typ": "pop"})


def pop_form(key: PopKey) -> dict[str, str]:
    """The token request fields that ask for a token bound to ``key``."""
    return {"token_type": "pop", "req_cnf": key.req_cnf()}


async def bound_token(auth: AuthConfig, key: PopKey, *, interactive: bool) -> Token:
    """An access token bound to ``key`` (``cnf``), cached apart from the bearer one.

    With ``auth.token_endpoint`` the configured grant asks for it; after
    ``arcctl login`` the account's refresh token does (the login cache keeps
    its bearer token for the relay).

    Raises:
        ConfigError: ``auth.token_command``: an external command cannot be asked for a bound token.
        AuthError: the issuer refused, or a sign-in is needed.
    """
    if auth.token_command:
        raise ConfigError("arcctl get-token --pop needs a token the issuer binds to your key: "
                          "configure auth.issuer (arcctl login) or auth.token_endpoint, not auth.token_command")
    from client.client_credentials import uses_client_credentials  # imports client.auth

    if auth.token_endpoint or not auth.issuer or uses_client_credentials(auth):
        return await CachedTokenSource(auth, extra_form=pop_form(key)).get_token()
    from client.oidc_discovery import discover

    endpoints = await discover(auth.issuer, auth.ca_file)
    derived = replace(auth, token_endpoint=endpoints.token_endpoint, scope=" ".join(auth.login_scopes()))
    return await token_from_login(derived, auth, interactive=interactive, extra_form=pop_form(key),
                                  needs="--pop needs to ask for a bound token",
                                  refused="to bind a token to your key")
