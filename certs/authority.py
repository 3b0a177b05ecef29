"""A small certificate authority: issue serving and client certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.keys import (
    BACKDATE,
    KeyKind,
    load_certificate,
    load_private_key,
    new_private_key,
    private_key_pem,
    self_signed_builder,
)


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate and its private key, PEM encoded. ``chain_pem`` is the
    leaf followed by the issuing CA, which is what a TLS server should send."""

    certificate_pem: bytes
    private_key_pem: bytes
    ca_certificate_pem: bytes

    @property
    def chain_pem(self) -> bytes:
        return self.certificate_pem + self.ca_certificate_pem


class CertificateAuthority:
    """Issues certificates. Create one with :meth:`create` or :meth:`load`."""

    def __init__(self, certificate_pem: bytes, private_key_pem_: bytes) -> None:
        self.certificate_pem = certificate_pem
        self.private_key_pem = private_key_pem_
        self._cert = load_certificate(certificate_pem)
        key = load_private_key(private_key_pem_)
        self._key: CertificateIssuerPrivateKeyTypes = key  # type: ignore[assignment]

    @classmethod
    def create(cls, common_name: str, *, valid_days: int = 3650, kind: KeyKind = "ec") -> CertificateAuthority:
        key = new_private_key(kind)
        cert = (
            self_signed_builder(key, common_name, valid_days=valid_days, ca=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key))

    @classmethod
    def load(cls, certificate_pem: bytes, private_key_pem_: bytes) -> CertificateAuthority:
        return cls(certificate_pem, private_key_pem_)

    def issue_server(
        self,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = ("127.0.0.1", "::1"),
        *,
        common_name: str | None = None,
        valid_days: int = 825,
        kind: KeyKind = "ec",
    ) -> IssuedCertificate:
        """A serving certificate. The SANs are what TLS clients verify against
        (for kubectl, the URL host or the kubeconfig's ``tls-server-name``)."""
        dns = list(dns_names)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        cn = common_name or (dns[0] if dns else "server")
        return self._issue(cn, [], sans, ExtendedKeyUsageOID.SERVER_AUTH, valid_days, kind)

    def issue_client(
        self,
        common_name: str,
        organizations: Iterable[str] = (),
        *,
        valid_days: int = 365,
        kind: KeyKind = "ec",
    ) -> IssuedCertificate:
        """A client certificate; Kubernetes reads CN as the user and O as groups."""
        return self._issue(common_name, list(organizations), [], ExtendedKeyUsageOID.CLIENT_AUTH, valid_days, kind)

    def issue_peer(
        self,
        common_name: str,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = ("127.0.0.1", "::1"),
        *,
        valid_days: int = 825,
        kind: KeyKind = "ec",
    ) -> IssuedCertificate:
        """A relay replica's peer certificate: it serves the replica's peer
        listener and authenticates the replica when it dials another one
        (server and client authentication)."""
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        return self._issue(common_name, [], sans, [ExtendedKeyUsageOID.SERVER_AUTH,
                                                   ExtendedKeyUsageOID.CLIENT_AUTH], valid_days, kind)

    def _issue(
        self,
        common_name: str,
        organizations: list[str],
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
        valid_days: int,
        kind: KeyKind,
    ) -> IssuedCertificate:
        key = new_private_key(kind)
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]),
                           critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key), self.certificate_pem
        )
