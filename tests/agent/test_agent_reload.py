"""``arc-agent`` reloads kube-aad-proxy's issuers on SIGHUP (issue 17 item 7)
without dropping connections: a kept-alive kubectl connection goes on after
it; a newly added issuer's token is accepted (under its prefix, now that two
issuers are trusted), a removed issuer's refused, and a bad config is refused
with one log line and the old one kept. Real process, real sandbox API server
and issuers."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from certs import CertificateAuthority, client_ssl_context, generate_key_pair, write_pem_pair
from sandbox.apiserver.server import SandboxApiServer
from sandbox.idp import SandboxIdp
from tests.support.kube_aad_proxy import TIMEOUT, read_response
from tests.support.processes import ChildProcess

pytestmark = pytest.mark.timeout(120)

NAME = "kube-aad-proxy.test"
ADMIN_OID = "72456920-99c3-4dff-ae71-fa469274d15a"
WHOAMI = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


class Connection:
    """One kept-alive TLS connection to kube-aad-proxy, as kubectl holds them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ca_pem: bytes) -> Connection:
        r, w = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl_context(ca_pem), server_hostname=NAME), TIMEOUT)
        return cls(r, w)

    async def whoami(self, token: str) -> tuple[int, Any]:
        """(status, username or the Status body) of a SelfSubjectReview."""
        body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
        self.writer.write(f"POST {WHOAMI} HTTP/1.1\r\nHost: {NAME}\r\nAuthorization: Bearer {token}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        resp = await read_response(self.reader)
        doc = json.loads(resp.body)
        return resp.status, doc["status"]["userInfo"]["username"] if resp.status == 201 else doc

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[SandboxApiServer]:
    server = SandboxApiServer(tmp_path / "api")
    await server.start()
    yield server
    await server.stop()


async def test_sighup_reloads_issuers_and_keeps_connections(tmp_path: Path, api: SandboxApiServer) -> None:
    ca = CertificateAuthority.create("reload serving CA")
    cert, key = write_pem_pair(tmp_path, "serving", ca.issue_server([NAME]))
    (tmp_path / "token").write_text(api.admin_token)
    (tmp_path / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    config = tmp_path / "agent.yaml"
    async with SandboxIdp(tmp_path / "idp-a") as a, SandboxIdp(tmp_path / "idp-b") as b:
        def write(issuers: list[dict[str, Any]]) -> None:
            config.write_text(yaml.safe_dump({
                "relay": {"url": "https://127.0.0.1:1"}, "cluster": {"resource_group": "rg", "name": "c"},
                "agent_key_file": str(tmp_path / "agent.key"),
                "kube_aad_proxy": {"listen": "127.0.0.1:0", "serving_cert_file": str(cert),
                                   "serving_key_file": str(key), "upstream_url": api.url,
                                   "upstream_ca_file": str(api.ca_file),
                                   "upstream_token_file": str(tmp_path / "token"),
                                   "oidc": {"issuers": issuers}}}))
        issuer_a = {"issuer": a.issuer, "ca_file": a.ca_file, "alias": "corp"}
        issuer_b = {"issuer": b.issuer, "ca_file": b.ca_file}
        write([issuer_a])
        agent = await ChildProcess.start_async([sys.executable, "-m", "agent.cli", "--config", str(config)],
                                               ready="kube-aad-proxy listening on", ready_on="stderr",
                                               name="arc-agent")

        async def hangup(needle: str) -> str:
            agent.send_signal(signal.SIGHUP)
            return await asyncio.to_thread(agent.err.wait_for, needle)

        async def status_alone(token: str) -> int:
            """A refusal closes its connection: ask on one of its own."""
            one = await Connection.open(port, ca.certificate_pem)
            try:
                return (await one.whoami(token))[0]
            finally:
                one.close()

        kept = None
        try:
            port = int(agent.ready_line.rsplit(":", 1)[1])
            kept = await Connection.open(port, ca.certificate_pem)
            assert await kept.whoami(a.mint("admin")) == (201, ADMIN_OID)  # one issuer: no prefix
            assert await status_alone(b.mint("admin")) == 401

            write([{**issuer_a, "username_prefix": ""}, issuer_b])  # A's names could be B's
            line = await hangup("configuration reload refused")
            assert "username_prefix of issuer" in line and "is empty while 2 issuers are trusted" in line
            assert await status_alone(b.mint("admin")) == 401
            assert await kept.whoami(a.mint("admin")) == (201, ADMIN_OID)

            write([issuer_a, issuer_b])
            await hangup("issuer configuration reloaded")
            # The same connection, now under the new configuration.
            assert await kept.whoami(a.mint("admin")) == (201, f"corp:{ADMIN_OID}")
            assert await kept.whoami(b.mint("admin")) == (201, f"{b.issuer}#{ADMIN_OID}")

            write([issuer_b])
            await hangup("issuer configuration reloaded")
            assert await status_alone(a.mint("admin")) == 401
            assert await kept.whoami(b.mint("admin")) == (201, ADMIN_OID)  # alone again: bare names
            agent.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(agent.wait, 30) == 0, agent.output()
        finally:
            if kept is not None:
                kept.close()
            agent.kill()
