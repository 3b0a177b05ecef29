"""``arc-proxy`` as a real process against a real relay, sandbox issuer and
agent on loopback: when stopped it says so in one line, naming what it did
to the kubeconfig's current-context, and exits 0."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from certs import CertificateAuthority, generate_key_pair
from relay.registry import Cluster
from tests.support.relay import RelayEnv, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A started relay and sandbox issuer."""
    async with running_env(tmp_path) as env:
        yield env


async def _registered_cluster(env: RelayEnv, rg: str, name: str) -> None:
    """A registration with a serving CA (what arc-proxy writes into the
    kubeconfig) and a connected agent that echoes every stream."""
    keys = generate_key_pair(f"{rg}/{name}")
    ca = CertificateAuthority.create(f"{rg}/{name} serving CA")
    await env.state.registry.put(Cluster(
        name=name, resource_group=rg, agent_public_key_certificate=keys.certificate_pem.decode(),
        serving_ca_certificate=ca.certificate_pem.decode(), tls_server_name=f"{name}.local"))
    echo = await start_echo_server()
    await env.start_agent(f"{rg}/{name}", keys, ("127.0.0.1", server_port(echo)))
    await env.wait_agent(f"{rg}/{name}")


def _client_config(env: RelayEnv, tmp: Path) -> Path:
    token_file = tmp / "token"
    token_file.write_text(env.token("admin"))
    path = tmp / "client.yaml"
    path.write_text(yaml.safe_dump({
        "relay": {"url": env.relay.url, "ca_file": str(env.relay.ca_file)},
        "resource_group": "rg1",
        "auth": {"token_command": f"cat {shlex.quote(str(token_file))}"},
    }))
    return path


async def _read_line(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(WAIT):
        return (await stream.readline()).decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_arc_proxy_says_it_stopped_and_restored_the_context(
    relay_env: RelayEnv, tmp_path: Path, sig: signal.Signals
) -> None:
    """Ready line, then on SIGTERM/Ctrl-C: "Proxy for cluster rg1/alpha stopped;
    current-context in FILE is 'before' again.", exit 0, nothing on stderr but
    the first-use pin line."""
    await _registered_cluster(relay_env, "rg1", "alpha")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config",
                                          "current-context": "before",
                                          "clusters": [], "users": [], "contexts": []}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.proxy_cli", "-n", "alpha", "--port", "0",
        "--file", str(kubeconfig), "--config", str(_client_config(relay_env, tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_PROXY": "*"})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = await _read_line(proc.stdout)
        assert ready.startswith("Proxy for cluster rg1/alpha on https://127.0.0.1:"), ready
        assert yaml.safe_load(kubeconfig.read_text())["current-context"] == "alpha"
        proc.send_signal(sig)
        async with asyncio.timeout(WAIT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert out.decode() == f"Proxy for cluster rg1/alpha stopped; current-context in {kubeconfig} " \
                           "is 'before' again.\n"
    # The only stderr line: the serving CA pinned at first use (client/known_clusters.py).
    assert err.decode().startswith("First use of cluster rg1/alpha: pinned its serving CA sha256:"), err
    assert err.decode().count("\n") == 1
    assert yaml.safe_load(kubeconfig.read_text())["current-context"] == "before"
