"""certs/: issued certificates verify in a real TLS handshake on loopback."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from certs import (
    CertificateAuthority,
    client_ssl_context,
    fingerprint_sha256,
    generate_key_pair,
    public_key_pem,
    server_ssl_context,
)


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
        )
        data = await reader.read()
        writer.close()
        return data
    finally:
        server.close()
        await server.wait_closed()


async def test_client_verifies_server_certificate_by_name() -> None:
    """A server certificate issued for a DNS name verifies under that name (the
    kubeconfig's tls-server-name) and fails under another."""
    ca = CertificateAuthority.create("test-ca")
    issued = ca.issue_server(["kube-aad-proxy.arc-system"], ["127.0.0.1"])
    assert await _handshake(server_ssl_context(issued), client_ssl_context(ca.certificate_pem), "kube-aad-proxy.arc-system") == b"hello"
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(server_ssl_context(issued), client_ssl_context(ca.certificate_pem), "other.example")


async def test_server_rejects_certificate_from_other_ca() -> None:
    """A client trusting another CA refuses the server."""
    ca, other = CertificateAuthority.create("a"), CertificateAuthority.create("b")
    issued = ca.issue_server(["localhost"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(server_ssl_context(issued), client_ssl_context(other.certificate_pem), "localhost")


def test_key_pair_fingerprint_and_public_key_are_stable() -> None:
    """An agent key pair's certificate and private key name the same public key."""
    pair = generate_key_pair("cluster-a")
    assert public_key_pem(pair.certificate_pem) == public_key_pem(pair.private_key_pem)
    assert pair.fingerprint == fingerprint_sha256(pair.certificate_pem)
    assert len(pair.fingerprint) == 64
    assert generate_key_pair("cluster-a").fingerprint != pair.fingerprint
