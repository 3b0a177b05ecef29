"""Key pairs and certificate helpers."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

KeyKind = Literal["ec", "rsa"]

# Clock skew between machines is common; back-dating notBefore avoids
# "certificate is not yet valid" on a peer whose clock is a little behind.
BACKDATE = dt.timedelta(minutes=5)


def new_private_key(kind: KeyKind = "ec") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A fresh private key: P-256 (fast, small) or RSA-2048 (for peers that need RSA)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(pem, password=None)


def load_certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def public_key_pem(cert_or_key_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a certificate or of a private key."""
    if b"CERTIFICATE" in cert_or_key_pem:
        public = load_certificate(cert_or_key_pem).public_key()
    else:
        public = load_private_key(cert_or_key_pem).public_key()  # type: ignore[assignment]
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint_sha256(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, as lowercase hex (no colons)."""
    der = load_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class KeyPair:
    """An agent's identity: a private key and a self-signed certificate of its
    public key. The relay stores only ``certificate_pem``
    (``agentPublicKeyCertificate``); the agent keeps ``private_key_pem``."""

    private_key_pem: bytes
    certificate_pem: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_sha256(self.certificate_pem)


def self_signed_builder(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, common_name: str, *, valid_days: int, ca: bool
) -> x509.CertificateBuilder:
    """The common part of every self-signed certificate here (a CA's, an agent's)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def generate_key_pair(common_name: str, *, valid_days: int = 3650, kind: KeyKind = "ec") -> KeyPair:
    """A key pair whose certificate is self-signed with ``CN=common_name``."""
    key = new_private_key(kind)
    cert = self_signed_builder(key, common_name, valid_days=valid_days, ca=False).sign(key, hashes.SHA256())
    return KeyPair(private_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))
