"""TLS contexts and PEM files."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from certs.authority import IssuedCertificate
from certs.files import write_secret_file


def write_pem_pair(directory: str | os.PathLike[str], name: str, issued: IssuedCertificate) -> tuple[Path, Path]:
    """Write ``NAME.crt`` (leaf + CA chain) and ``NAME.key`` (mode 0600) into
    ``directory``; returns both paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / f"{name}.crt", d / f"{name}.key"
    cert_path.write_bytes(issued.chain_pem)
    write_secret_file(key_path, issued.private_key_pem)
    return cert_path, key_path


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # ssl only loads key material from files; keep them private and short-lived.
    with tempfile.TemporaryDirectory(prefix="arc-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        cert_path.write_bytes(cert_pem)
        write_secret_file(key_path, key_pem)
        ctx.load_cert_chain(cert_path, key_path)


def server_ssl_context(
    issued: IssuedCertificate, *, client_ca_pem: bytes | None = None, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ server context. With ``client_ca_pem``, client certificates
    signed by it are requested (optional) and verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, issued.chain_pem, issued.private_key_pem)
    if client_ca_pem is not None:
        ctx.load_verify_locations(cadata=client_ca_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(alpn or ["http/1.1"])
    return ctx


def client_ssl_context(
    ca_pem: bytes | None = None, *, client: IssuedCertificate | None = None
) -> ssl.SSLContext:
    """A verifying TLS client context: trusts ``ca_pem`` (else the system
    store) and optionally presents a client certificate."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode() if ca_pem else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        _load_chain(ctx, client.chain_pem, client.private_key_pem)
    return ctx
