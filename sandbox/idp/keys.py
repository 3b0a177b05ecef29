"""The issuer's signing keys: RSA, published as a JWKS, rotated on demand.

After :meth:`SigningKeys.rotate` the new key signs and the old one stays in the
JWKS for ``grace_period`` seconds, as real issuers do, so tokens signed just
before a rotation keep validating. ``rotate(drop_old=True)`` withdraws the old
keys at once (a compromise drill).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from certs import write_secret_file

# Long enough that no token minted before a rotation is orphaned (our longest
# default lifetime is one hour), short enough to prove keys really go away.
DEFAULT_GRACE_PERIOD = 3600.0
# 2048 bits: the smallest size validators accept, and ~50-100 ms to generate,
# which keeps the sandbox's start well under its 2 s budget.
RSA_BITS = 2048


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    """One RSA key; ``retired_at`` is set when a newer key took over."""

    private_key: rsa.RSAPrivateKey
    created: float
    retired_at: float | None = None

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public half as a JWK (``kid`` is its RFC 7638 thumbprint)."""
        nums = self.private_key.public_key().public_numbers()
        core = {"e": _int_b64(nums.e), "kty": "RSA", "n": _int_b64(nums.n)}
        kid = _b64(hashlib.sha256(json.dumps(core, separators=(",", ":"), sort_keys=True).encode()).digest())
        return {"kty": "RSA", "use": "sig", "kid": kid, "n": core["n"], "e": core["e"]}

    @property
    def kid(self) -> str:
        return self.public_jwk["kid"]

    @property
    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


class SigningKeys:
    """The key set, optionally persisted to ``path`` (JSON, mode 0600) so a
    restarted issuer keeps validating the tokens it issued before."""

    def __init__(self, path: Path | None = None, *, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        self._path = path
        self.grace_period = grace_period
        self._keys: list[SigningKey] = self._load() if path is not None and path.exists() else []
        if not self._keys:
            self._keys = [self._new()]
            self._save()

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens."""
        return self._keys[-1]

    def rotate(self, *, drop_old: bool = False) -> SigningKey:
        """Make a new signing key; keep old ones published for the grace
        period, or withdraw them now with ``drop_old``. Returns the new key."""
        now = time.time()
        for k in self._keys:
            k.retired_at = k.retired_at or now
        new = self._new()
        self._keys = [new] if drop_old else [*self._keys, new]
        self._save()
        return new

    def published(self) -> list[SigningKey]:
        """Keys in the JWKS: the current one plus retired ones within grace."""
        now = time.time()
        keep = [k for k in self._keys if k.retired_at is None or now - k.retired_at < self.grace_period]
        if len(keep) != len(self._keys):
            self._keys = keep
            self._save()
        return list(self._keys)

    def find(self, kid: str) -> SigningKey | None:
        """A published key by kid."""
        return next((k for k in self.published() if k.kid == kid), None)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document."""
        return {"keys": [k.public_jwk for k in self.published()]}

    @staticmethod
    def _new() -> SigningKey:
        return SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS), time.time())

    def _load(self) -> list[SigningKey]:
        assert self._path is not None
        doc = json.loads(self._path.read_text())
        keys = []
        for e in doc["keys"]:
            key = serialization.load_pem_private_key(e["pem"].encode(), password=None)
            if isinstance(key, rsa.RSAPrivateKey):
                keys.append(SigningKey(key, float(e["created"]), e.get("retired_at")))
        return keys

    def _save(self) -> None:
        if self._path is None:
            return
        doc = {
            "keys": [
                {"pem": k.private_pem.decode(), "created": k.created, "retired_at": k.retired_at}
                for k in self._keys
            ]
        }
        write_secret_file(self._path, json.dumps(doc))
