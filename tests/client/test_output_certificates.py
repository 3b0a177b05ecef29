"""``arcctl list``/``show`` print certificate fingerprints, not PEM blocks,
unless ``--show-certificates`` is given."""

from __future__ import annotations

import hashlib
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import CertificateAuthority, generate_key_pair
from client.output import render, with_certificate_fingerprints


def _der_sha256(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def test_output_replaces_each_certificate_by_its_sha256_fingerprint() -> None:
    """Both certificate fields become ``<field>Sha256`` (hex of the DER digest)
    in place; every other field is kept as it was."""
    agent = generate_key_pair("rg/c").certificate_pem.decode()
    ca = CertificateAuthority.create("rg/c serving CA").certificate_pem.decode()
    cluster = {"name": "c", "agentPublicKeyCertificate": agent, "servingCaCertificate": ca,
               "connectivityStatus": "Connected"}
    shown = with_certificate_fingerprints(cluster)
    assert list(shown) == ["name", "agentPublicKeyCertificateSha256", "servingCaCertificateSha256",
                           "connectivityStatus"]
    assert shown["agentPublicKeyCertificateSha256"] == _der_sha256(agent)
    assert shown["servingCaCertificateSha256"] == _der_sha256(ca)
    assert "BEGIN CERTIFICATE" not in render(shown, "json")
    assert cluster["agentPublicKeyCertificate"] == agent  # the input is not changed


def test_output_says_when_a_certificate_field_holds_no_certificate() -> None:
    """An empty field stays empty; garbage is named, never echoed."""
    shown = with_certificate_fingerprints({"agentPublicKeyCertificate": "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                                                         "-----END CERTIFICATE-----\n",
                                           "servingCaCertificate": ""})
    assert shown == {"agentPublicKeyCertificateSha256": "(not a PEM certificate)",
                     "servingCaCertificateSha256": ""}
    assert json.loads(render(shown))  # still valid JSON
