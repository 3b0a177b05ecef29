"""arc-proxy's websocket dial (client/relay_client.py ``RelaySessionKeeper``)
fails with the same one-line cause on both transports: a CA that did not sign
the relay's certificate, a certificate for another host, nothing listening, a
host name that does not resolve, an upgrade refused as busy. Real TLS
servers on loopback."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from certs import CertificateAuthority, server_ssl_context
from client.auth import TokenSource
from client.config import AuthConfig, ClientConfig
from client.errors import CliError
from client.relay_client import RelayBusy, RelaySessionKeeper

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("client_transport")]


@contextlib.asynccontextmanager
async def busy_relay(ips: list[str]) -> AsyncIterator[tuple[int, CertificateAuthority]]:
    """An HTTPS server on 127.0.0.1 whose certificate names ``relay.test`` and
    ``ips``, refusing the client websocket as busy (503, Retry-After)."""
    ca = CertificateAuthority.create("test relay CA")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "0"})

    app = web.Application()
    app.router.add_get("/client/v1/connect", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    listening = socket.create_server(("127.0.0.1", 0))
    site = web.SockSite(runner, listening, ssl_context=server_ssl_context(ca.issue_server(["relay.test"], ips)))
    await site.start()
    try:
        yield listening.getsockname()[1], ca
    finally:
        await runner.cleanup()


@pytest.fixture
async def tls_relay() -> AsyncIterator[tuple[int, CertificateAuthority]]:
    """``busy_relay`` with a certificate for ``relay.test`` only."""
    async with busy_relay([]) as relay:
        yield relay


async def _dial_error(url: str, ca_file: Path | None) -> CliError:
    config = ClientConfig(relay_url=url, relay_ca_file=str(ca_file) if ca_file else None,
                          auth=AuthConfig(token_command="echo not-used"))
    keeper = RelaySessionKeeper(config, TokenSource(config.auth))
    try:
        with pytest.raises(CliError) as caught:
            await keeper.start()
    finally:
        await keeper.close()
    assert "\n" not in str(caught.value)
    return caught.value


async def test_dial_names_a_ca_that_did_not_sign_the_relay_certificate(
        tls_relay: tuple[int, CertificateAuthority], tmp_path: Path) -> None:
    """A CA that did not sign the relay's certificate: verification failed, check relay.ca_file."""
    port, _ = tls_relay
    other = tmp_path / "other-ca.crt"
    other.write_bytes(CertificateAuthority.create("another CA").certificate_pem)
    text = str(await _dial_error(f"https://127.0.0.1:{port}", other))
    assert text.startswith(f"TLS certificate verification failed for https://127.0.0.1:{port}")
    assert f"check relay.ca_file ({other})" in text


async def test_dial_names_a_certificate_for_another_host(
        tls_relay: tuple[int, CertificateAuthority], tmp_path: Path) -> None:
    """The right CA, a certificate for another name: hostname mismatch."""
    port, ca = tls_relay
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.certificate_pem)
    text = str(await _dial_error(f"https://127.0.0.1:{port}", ca_file))
    assert "hostname mismatch" in text and "'127.0.0.1'" in text


async def test_dial_names_a_refused_connection() -> None:
    """Nothing listening: connection refused, is it running?"""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    text = str(await _dial_error(f"https://127.0.0.1:{port}", None))
    assert text == (f"cannot reach the relay at https://127.0.0.1:{port}: connection refused; is it "
                    "running? check relay.url in the client config")


async def test_dial_names_a_host_name_that_does_not_resolve() -> None:
    """A .invalid name: cannot resolve the relay's host name."""
    text = str(await _dial_error("https://relay.invalid:8443", None))
    assert text.startswith("cannot resolve the relay's host name 'relay.invalid'")


async def test_dial_reports_a_busy_relay_with_its_retry_after(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 with Retry-After to the upgrade: RelayBusy."""
    monkeypatch.setattr("client.relay_client.START_BUSY_RETRIES", 0)  # the first refusal is the answer
    async with busy_relay(["127.0.0.1"]) as (port, ca):
        ca_file = tmp_path / "ca.crt"
        ca_file.write_bytes(ca.certificate_pem)
        error = await _dial_error(f"https://127.0.0.1:{port}", ca_file)
    assert isinstance(error, RelayBusy) and "HTTP 503" in str(error)
