"""``arc-agent`` as a real process stops cleanly: after kube-aad-proxy has
validated an OIDC token (so its token validator holds HTTP sessions to the
issuer), SIGTERM ends the process with exit 0 and not one ERROR line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from certs import CertificateAuthority, client_ssl_context, write_pem_pair
from sandbox.apiserver.server import SandboxApiServer
from tests.support.relay import RelayEnv, running_env
from tests.support.servers import server_port
from tests.support.waits import WAIT
from tunnel import TunnelSession, splice


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A started relay and sandbox issuer."""
    async with running_env(tmp_path) as env:
        yield env


async def _bridge(client: TunnelSession, target: bytes) -> asyncio.Server:
    """What arc-proxy does: a local listener whose connections become streams."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = await client.open_stream(target, timeout=WAIT)
        await splice(stream, reader, writer)

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_agent_cli_stops_without_error_lines_after_validating_a_token(
    relay_env: RelayEnv, tmp_path: Path
) -> None:
    """An OIDC request through kube-aad-proxy opens the validator's sessions;
    SIGTERM then exits 0 with no ERROR record, no "Unclosed" report and no
    traceback on stderr."""
    api = SandboxApiServer(tmp_path / "api", kube_version="1.33.0")
    await api.start()
    ca = CertificateAuthority.create("cluster serving CA")
    serving = ca.issue_server(["kube-aad-proxy.demo.local"], [], common_name="kube-aad-proxy")
    cert_file, key_file = write_pem_pair(tmp_path, "serving", serving)
    token_file = tmp_path / "token"
    token_file.write_text(api.admin_token)
    keys = await relay_env.register("rg1", "oidc")
    agent_key = tmp_path / "agent.key"
    agent_key.write_bytes(keys.private_key_pem)
    idp = relay_env.idp
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "relay": {"url": relay_env.relay.url, "ca_file": str(relay_env.relay.ca_file)},
        "cluster": {"resource_group": "rg1", "name": "oidc"},
        "agent_key_file": str(agent_key),
        "kube_aad_proxy": {
            "listen": "127.0.0.1:0", "serving_cert_file": str(cert_file),
            "serving_key_file": str(key_file), "upstream_url": api.url,
            "upstream_ca_file": str(api.ca_file), "upstream_token_file": str(token_file),
            "oidc": {"issuers": [{"issuer": idp.issuer, "audiences": ["api://cluster-connect"],
                                  "ca_file": str(idp.ca_file)}]}}}))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_PROXY": "*"})
    bridge = None
    try:
        await relay_env.wait_agent("rg1/oidc")
        client = await relay_env.client(relay_env.token("admin"))
        bridge = await _bridge(client, b"rg1/oidc")
        async with aiohttp.ClientSession() as http, http.get(
            f"https://127.0.0.1:{server_port(bridge)}/version",
            ssl=client_ssl_context(ca.certificate_pem), server_hostname="kube-aad-proxy.demo.local",
            headers={"Authorization": f"Bearer {relay_env.token('demo')}"},
        ) as resp:
            # 200 means kube-aad-proxy validated the token against the issuer's JWKS.
            assert resp.status == 200, await resp.text()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        assert code == 0, stderr
        assert " ERROR " not in stderr and "Unclosed" not in stderr, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        if bridge is not None:
            bridge.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await api.stop()
