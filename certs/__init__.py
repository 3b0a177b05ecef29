"""PKI for cluster-connect: certificate authorities, serving and client
certificates, agent key pairs, fingerprints and TLS contexts.

Everything here is PEM in, PEM out (``bytes``) so callers can store the
material anywhere: files, a Secret, a SQLite column.
"""

from __future__ import annotations

from certs.authority import CertificateAuthority, IssuedCertificate
from certs.files import write_secret_file
from certs.keys import (
    KeyPair,
    fingerprint_sha256,
    generate_key_pair,
    load_certificate,
    load_private_key,
    public_key_pem,
)
from certs.tls import client_ssl_context, server_ssl_context, write_pem_pair

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "KeyPair",
    "client_ssl_context",
    "fingerprint_sha256",
    "generate_key_pair",
    "load_certificate",
    "load_private_key",
    "public_key_pem",
    "server_ssl_context",
    "write_pem_pair",
    "write_secret_file",
]
