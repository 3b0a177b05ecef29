"""``arc-agent`` as a real process: config errors, forward_to, and the default
mode (kube-aad-proxy in front of the sandbox API server) through a real relay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from certs import CertificateAuthority, client_ssl_context, write_pem_pair
from sandbox.apiserver.server import SandboxApiServer
from tests.support.processes import ChildProcess, child_env
from tests.support.relay import RelayEnv, roundtrip
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, until_async
from tunnel import TunnelSession, splice


def _write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _run_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


async def _agent_base(env: RelayEnv, tmp: Path, rg: str, name: str) -> dict[str, Any]:
    keys = await env.register(rg, name)
    key_file = tmp / f"{name}.key"
    key_file.write_bytes(keys.private_key_pem)
    assert env.relay.ca_file is not None
    return {"relay": {"url": env.relay.url, "ca_file": str(env.relay.ca_file)},
            "cluster": {"resource_group": rg, "name": name},
            "agent_key_file": str(key_file)}


# arc-agent logs this once its session with the relay is up (agent/connector.py).
AGENT_CONNECTED = "agent connected relay="


async def start_agent_process(config: Path) -> ChildProcess:
    """``python -m agent.cli`` once it connected to the relay (which serves on
    this test's loop meanwhile); stop it with ``stop_agent_process``."""
    return await ChildProcess.start_async(
        [sys.executable, "-m", "agent.cli", "--config", str(config)], ready=AGENT_CONNECTED,
        ready_on="stderr", name="arc-agent", env=child_env(NO_PROXY="*"))


async def stop_agent_process(agent: ChildProcess) -> int:
    """SIGTERM and its exit code (it drains its session first)."""
    return await asyncio.to_thread(agent.stop)


def test_agent_cli_reports_operator_errors_in_one_line(tmp_path: Path) -> None:
    """Missing config, unreadable key, invalid relay URL: one line each, non-zero exit."""
    key = tmp_path / "agent.key"
    key.write_text("not a key")
    good_key = tmp_path / "good.key"
    from certs import generate_key_pair
    good_key.write_bytes(generate_key_pair("x").private_key_pem)
    base = {"relay": {"url": "https://relay.example"}, "cluster": {"resource_group": "rg", "name": "c"},
            "forward_to": "127.0.0.1:1"}
    cases = [
        (tmp_path / "missing.yaml", "does not exist"),
        (_write_config(tmp_path / "a.yaml", {**base, "agent_key_file": str(tmp_path / "nokey")}),
         "agent_key_file"),
        (_write_config(tmp_path / "b.yaml", {**base, "agent_key_file": str(key)}), "PEM private key"),
        (_write_config(tmp_path / "c.yaml", {**base, "agent_key_file": str(good_key),
                                             "relay": {"url": "ftp://x"}}), "relay.url"),
    ]
    for config, expected in cases:
        result = _run_cli(config)
        assert result.returncode != 0
        assert expected in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


async def test_agent_cli_forward_to_pipes_streams_to_tcp(relay_env: RelayEnv, tmp_path: Path) -> None:
    """With forward_to the agent process pipes each stream to that TCP address."""
    echo = await start_echo_server()
    config = _write_config(tmp_path / "agent.yaml", {
        **await _agent_base(relay_env, tmp_path, "rg1", "fwd"),
        "forward_to": f"127.0.0.1:{server_port(echo)}"})
    agent = await start_agent_process(config)
    try:
        await relay_env.wait_agent("rg1/fwd")
        client = await relay_env.client(relay_env.token("admin"))
        payload = os.urandom(256 * 1024)
        assert await roundtrip(client, b"rg1/fwd", payload) == payload
    finally:
        assert await stop_agent_process(agent) == 0, agent.output()
        echo.close()


async def _bridge(client: TunnelSession, target: bytes) -> asyncio.Server:
    """What arc-proxy does: a local listener whose connections become streams."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = await client.open_stream(target, timeout=WAIT)
        await splice(stream, reader, writer)

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_agent_cli_default_mode_serves_api_through_kube_aad_proxy(
    relay_env: RelayEnv, tmp_path: Path
) -> None:
    """Default mode: kube-aad-proxy terminates TLS end to end, the API server answers,
    and the agent reports kubernetesVersion and node counts."""
    api = SandboxApiServer(tmp_path / "api", kube_version="1.33.0")
    await api.start()
    ca = CertificateAuthority.create("cluster serving CA")
    serving = ca.issue_server(["kube-aad-proxy.demo.local"], [], common_name="kube-aad-proxy")
    cert_file, key_file = write_pem_pair(tmp_path, "serving", serving)
    token_file = tmp_path / "token"
    token_file.write_text(api.admin_token)
    config = _write_config(tmp_path / "agent.yaml", {
        **await _agent_base(relay_env, tmp_path, "rg1", "demo"),
        "kube_aad_proxy": {"listen": "127.0.0.1:0", "serving_cert_file": str(cert_file),
                           "serving_key_file": str(key_file), "upstream_url": api.url,
                           "upstream_ca_file": str(api.ca_file), "upstream_token_file": str(token_file)}})
    agent = await start_agent_process(config)
    bridge = None
    try:
        await relay_env.wait_agent("rg1/demo")
        client = await relay_env.client(relay_env.token("admin"))
        bridge = await _bridge(client, b"rg1/demo")
        ssl_ctx = client_ssl_context(ca.certificate_pem)
        async with aiohttp.ClientSession() as http, http.get(
            f"https://127.0.0.1:{server_port(bridge)}/version", ssl=ssl_ctx,
            server_hostname="kube-aad-proxy.demo.local",
            headers={"Authorization": f"Bearer {api.admin_token}"},
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["gitVersion"].startswith("v1.33")
        registry = relay_env.state.registry
        async def metadata() -> bool:
            return (await registry.get("rg1/demo")).total_node_count is not None
        await until_async(metadata, "the agent's metadata")
        cluster = await registry.get("rg1/demo")
        assert cluster.kubernetes_version.startswith("v1.33")
        assert cluster.total_node_count >= 1 and cluster.total_core_count >= 1
    finally:
        if bridge is not None:
            bridge.close()
        assert await stop_agent_process(agent) == 0, agent.output()
        await api.stop()


async def test_agent_cli_limits_its_session_streams_from_config(relay_env: RelayEnv, tmp_path: Path) -> None:
    """``limits.max_concurrent_streams`` bounds the agent's session: with 2,
    a third concurrent stream is refused TOO_MANY_STREAMS, naming the agent's
    limit; once one closes a new one opens."""
    from tunnel import ErrorCode, StreamRefused

    echo = await start_echo_server()
    config = _write_config(tmp_path / "agent.yaml", {
        **await _agent_base(relay_env, tmp_path, "rg1", "small"),
        "forward_to": f"127.0.0.1:{server_port(echo)}", "limits": {"max_concurrent_streams": 2}})
    agent = await start_agent_process(config)
    try:
        await relay_env.wait_agent("rg1/small")
        client = await relay_env.client(relay_env.token("admin"))
        held = [await client.open_stream(b"rg1/small", timeout=WAIT) for _ in range(2)]
        with pytest.raises(StreamRefused) as refused:
            await client.open_stream(b"rg1/small", timeout=WAIT)
        assert refused.value.code == ErrorCode.TOO_MANY_STREAMS
        assert "limits.max_concurrent_streams" in refused.value.reason
        await held[0].write_eof()
        async with asyncio.timeout(WAIT):
            while await held[0].read():
                pass
        await held[0].aclose()
        assert await roundtrip(client, b"rg1/small", b"again") == b"again"
    finally:
        assert await stop_agent_process(agent) == 0, agent.output()
        echo.close()


def test_agent_config_rejects_a_bad_stream_limit_in_one_line(tmp_path: Path) -> None:
    """A non-positive ``limits.max_concurrent_streams`` is a one-line error."""
    from certs import generate_key_pair

    key = tmp_path / "agent.key"
    key.write_bytes(generate_key_pair("x").private_key_pem)
    config = _write_config(tmp_path / "agent.yaml", {
        "relay": {"url": "https://relay.example"}, "cluster": {"resource_group": "rg", "name": "c"},
        "forward_to": "127.0.0.1:1", "agent_key_file": str(key), "limits": {"max_concurrent_streams": 0}})
    result = _run_cli(config)
    assert result.returncode != 0
    assert "limits.max_concurrent_streams" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
