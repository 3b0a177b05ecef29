"""The relay client names the real cause of a failed call: a CA that did not
sign the relay's certificate, a certificate for another name, nothing
listening, a name that does not resolve, a relay that never answers. Real TLS
servers on loopback; each failure is one line with its fix."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from certs import CertificateAuthority, server_ssl_context
from client.auth import TokenSource
from client.config import AuthConfig, ClientConfig
from client.errors import RelayUnreachable
from client.relay_client import RelayApi


@pytest.fixture
async def tls_relay(tmp_path: Path) -> AsyncIterator[tuple[int, CertificateAuthority]]:
    """An HTTPS server on 127.0.0.1 whose certificate (from its own CA) names
    ``relay.test`` only; the port and the CA are yielded."""
    ca = CertificateAuthority.create("test relay CA")

    async def clusters(request: web.Request) -> web.Response:
        return web.json_response({"value": []})
    app = web.Application()
    app.router.add_get("/api/v1/clusters", clusters)
    runner = web.AppRunner(app)
    await runner.setup()
    listening = socket.create_server(("127.0.0.1", 0))
    site = web.SockSite(runner, listening,
                        ssl_context=server_ssl_context(ca.issue_server(["relay.test"], [])))
    await site.start()
    yield listening.getsockname()[1], ca
    await runner.cleanup()


def _config(url: str, ca_file: Path | None) -> ClientConfig:
    return ClientConfig(relay_url=url, relay_ca_file=str(ca_file) if ca_file else None,
                        auth=AuthConfig(token_command="echo not-used"))


async def _list_error(config: ClientConfig) -> str:
    async with RelayApi(config, TokenSource(config.auth)) as api:
        with pytest.raises(RelayUnreachable) as caught:
            await api.list_clusters()
    text = str(caught.value)
    assert "\n" not in text
    return text


async def test_relay_client_names_a_ca_that_did_not_sign_the_relay_certificate(
        tls_relay: tuple[int, CertificateAuthority], tmp_path: Path) -> None:
    """relay.ca_file holds another CA: verification failed, check relay.ca_file (path)."""
    port, _ = tls_relay
    other = tmp_path / "other-ca.crt"
    other.write_bytes(CertificateAuthority.create("another CA").certificate_pem)
    text = await _list_error(_config(f"https://127.0.0.1:{port}", other))
    assert text.startswith(f"TLS certificate verification failed for https://127.0.0.1:{port}")
    assert f"check relay.ca_file ({other})" in text
    assert "is it running" not in text


async def test_relay_client_names_a_certificate_for_another_host(
        tls_relay: tuple[int, CertificateAuthority], tmp_path: Path) -> None:
    """The right CA, but the certificate names relay.test, not 127.0.0.1: hostname mismatch."""
    port, ca = tls_relay
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.certificate_pem)
    text = await _list_error(_config(f"https://127.0.0.1:{port}", ca_file))
    assert "hostname mismatch" in text and "'127.0.0.1'" in text
    assert "set relay.url to a name the relay's certificate holds" in text


async def test_relay_client_names_a_refused_connection() -> None:
    """Nothing listens on the port: refused, is it running?"""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    text = await _list_error(_config(f"https://127.0.0.1:{port}", None))
    assert text == (f"cannot reach the relay at https://127.0.0.1:{port}: connection refused; is it "
                    "running? check relay.url in the client config")


async def test_relay_client_names_a_host_name_that_does_not_resolve() -> None:
    """A name under .invalid (RFC 6761: never resolves): cannot resolve, check relay.url."""
    text = await _list_error(_config("https://relay.invalid:8443", None))
    assert text.startswith("cannot resolve the relay's host name 'relay.invalid'")


async def test_relay_client_names_a_relay_that_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that accepts but never completes TLS: the call times out and
    the message says so."""
    monkeypatch.setattr("client.relay_client.HTTP_TIMEOUT", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody answers
        port = silent.getsockname()[1]
        text = await _list_error(_config(f"https://127.0.0.1:{port}", None))
    assert text == (f"the relay at https://127.0.0.1:{port} did not answer in time: check relay.url "
                    "and the network (a proxy or firewall in the way?)")
