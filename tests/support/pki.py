"""Certificates for tests: one CA issuing the serving certificates of
kube-aad-proxy and of the API server stand-in behind it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from certs import CertificateAuthority, IssuedCertificate, client_ssl_context

# The TLS server name kube-aad-proxy's certificate is issued for.
PROXY_NAME = "kube-aad-proxy.test"


@dataclass
class Pki:
    """One CA, a serving cert for the proxy and one for the upstream."""

    ca: CertificateAuthority
    proxy_cert: IssuedCertificate
    upstream_cert: IssuedCertificate

    @classmethod
    def create(cls) -> Pki:
        ca = CertificateAuthority.create("kube-aad-proxy test CA")
        return cls(ca, ca.issue_server([PROXY_NAME]), ca.issue_server(["localhost"]))

    def client_context(self) -> ssl.SSLContext:
        ctx = client_ssl_context(self.ca.certificate_pem)
        ctx.set_alpn_protocols(["h2", "http/1.1"])  # as kubectl offers
        return ctx
