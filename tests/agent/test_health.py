"""arc-agent's health listener: readiness follows the relay session and
kube-aad-proxy's API server; metrics count sessions and streams."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from agent import KubeAadProxy, KubeAadProxyConfig
from agent.cli import run_agent
from agent.config import AgentConfigError, agent_config_from_dict
from agent.connector import Connector, ConnectorConfig
from agent.health import agent_health_listener
from certs import generate_key_pair
from cmdline import PortInUse
from health import HealthListener
from tests.support.kube_aad_proxy import RecordingUpstream
from tests.support.pki import Pki
from tests.support.relay import roundtrip, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def wait_for_answer(url: str, accept: Callable[[int, str], bool]) -> tuple[int, str]:
    """GET ``url`` until ``accept(status, body)`` (bounded by WAIT): a wait on the
    endpoint's own state, not on time."""
    async with asyncio.timeout(WAIT):
        while True:
            status, body = await get(url)
            if accept(status, body):
                return status, body
            await asyncio.sleep(0.02)


def sample(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_prefix} not in /metrics")


def unreachable_connector() -> Connector:
    """A connector never started (so never connected)."""
    keys = generate_key_pair("rg/a")
    return Connector(ConnectorConfig(relay_url="https://127.0.0.1:9", cluster_id="rg/a",
                                     private_key_pem=keys.private_key_pem, upstream=("127.0.0.1", 9)))


async def started(health: HealthListener) -> HealthListener:
    await health.start("127.0.0.1", 0)
    return health


async def test_agent_readyz_follows_its_relay_session(tmp_path: Path) -> None:
    """/readyz fails before the agent connects and after its relay stops, passes
    while the session is up; /metrics counts the session and the stream it served."""
    async with running_env(tmp_path) as env:
        echo = await start_echo_server()
        keys = await env.register("rg1", "alpha")
        connector = await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        health = await started(agent_health_listener(connector, None))
        try:
            await env.wait_agent("rg1/alpha")
            assert await wait_for_answer(health.url + "/readyz", lambda s, _: s == 200) == (200, "ok\n")
            client = await env.client(env.token("admin"))
            assert await roundtrip(client, b"rg1/alpha", b"ping") == b"ping"
            _, text = await get(health.url + "/metrics")
            assert sample(text, "arc_agent_relay_connected") == 1
            assert sample(text, "arc_agent_relay_sessions_total") == 1
            assert sample(text, 'arc_agent_streams_total{outcome="accepted"}') == 1
            await env.relay.stop(drain_seconds=0)
            _, body = await wait_for_answer(health.url + "/readyz", lambda s, _: s == 503)
            assert body.startswith("[-]relay-session failed: no relay session")
            assert await get(health.url + "/livez") == (200, "ok\n")
        finally:
            await health.stop()
            echo.close()


@pytest.fixture
def proxy_to(pki: Pki) -> Callable[[str], KubeAadProxy]:
    """Builds (does not start) a kube-aad-proxy in front of ``upstream_url``."""

    def build(upstream_url: str) -> KubeAadProxy:
        return KubeAadProxy(KubeAadProxyConfig(upstream_url=upstream_url, upstream_ca_pem=pki.ca.certificate_pem,
                                               serving_cert=pki.proxy_cert))
    return build


async def test_kube_aad_proxy_ready_once_asked_and_the_api_server_answered(
        upstream: RecordingUpstream, proxy_to: Callable[[str], KubeAadProxy]) -> None:
    """No probe before anyone asks; the first /readyz starts one probe connection
    and the next sees the API server answered."""
    proxy = proxy_to(upstream.url)
    await proxy.start("127.0.0.1", 0)
    health = await started(agent_health_listener(unreachable_connector(), proxy))
    try:
        assert upstream.connections == 0
        status, body = await get(health.url + "/readyz?verbose")
        assert status == 503 and "[-]kube-aad-proxy failed: API server not reached yet" in body
        status, body = await wait_for_answer(health.url + "/readyz?verbose",
                                             lambda _, b: "[+]kube-aad-proxy ok" in b)
        assert status == 503 and "[-]relay-session failed" in body  # the connector never ran
        assert upstream.connections == 1
        _, text = await get(health.url + "/metrics")
        assert sample(text, "arc_kube_aad_proxy_upstream_up") == 1
        assert sample(text, 'arc_kube_aad_proxy_upstream_connects_total{result="ok"}') == 1
    finally:
        await health.stop()
        await proxy.stop()


async def test_kube_aad_proxy_not_ready_when_the_api_server_is_unreachable(
        proxy_to: Callable[[str], KubeAadProxy]) -> None:
    """An API server that refuses connections fails readiness with the reason."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    proxy = proxy_to(f"https://localhost:{port}")
    await proxy.start("127.0.0.1", 0)
    health = await started(agent_health_listener(unreachable_connector(), proxy))
    try:
        _, body = await wait_for_answer(health.url + "/readyz?verbose",
                                        lambda _, b: "kube-aad-proxy failed: API server unreachable" in b)
        assert re.search(r"\[-\]kube-aad-proxy failed: API server unreachable: \S", body)
        _, text = await get(health.url + "/metrics")
        assert sample(text, "arc_kube_aad_proxy_upstream_up") == 0
        assert sample(text, 'arc_kube_aad_proxy_upstream_connects_total{result="failed"}') >= 1
    finally:
        await health.stop()
        await proxy.stop()


def test_agent_config_reads_health_keys(tmp_path: Path) -> None:
    """health.* reaches AgentConfig; a bad value is one line naming the key."""
    key = tmp_path / "agent.key"
    key.write_bytes(generate_key_pair("rg/a").private_key_pem)
    base = {"relay": {"url": "https://relay.example.com"}, "cluster": {"resource_group": "rg", "name": "a"},
            "agent_key_file": str(key), "forward_to": "127.0.0.1:9"}
    config = agent_config_from_dict({**base, "health": {"listen": "0.0.0.0:8081", "max_connections": 8}})
    assert (config.health_host, config.health_port, config.health_limits.max_connections) == ("0.0.0.0", 8081, 8)
    default = agent_config_from_dict(base)
    assert (default.health_host, default.health_port) == ("127.0.0.1", 0)
    with pytest.raises(AgentConfigError, match=re.escape("health.listen: expected host:port such as")):
        agent_config_from_dict({**base, "health": {"listen": "x"}})
    with pytest.raises(AgentConfigError, match=re.escape("health.connection_seconds: expected a number > 0")):
        agent_config_from_dict({**base, "health": {"connection_seconds": 0}})


async def test_run_agent_fails_with_one_line_when_health_port_is_taken(tmp_path: Path) -> None:
    """arc-agent with a health.listen port in use stops with one line naming the key (PortInUse)."""
    key = tmp_path / "agent.key"
    key.write_bytes(generate_key_pair("rg/a").private_key_pem)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = agent_config_from_dict({
            "relay": {"url": "https://127.0.0.1:9"}, "cluster": {"resource_group": "rg", "name": "a"},
            "agent_key_file": str(key), "forward_to": "127.0.0.1:9",
            "health": {"listen": f"127.0.0.1:{port}"}})
        with pytest.raises(PortInUse, match=re.escape(f"cannot listen on health.listen 127.0.0.1:{port}: ")):
            await run_agent(config, asyncio.Event())


async def test_agent_livez_fails_once_its_dial_loop_has_ended() -> None:
    """/livez passes while the dial loop runs and names it once it has ended
    (the kubelet then restarts an agent that could never reconnect)."""
    connector = unreachable_connector()
    dial_loop = asyncio.ensure_future(connector.run())
    health = await started(agent_health_listener(connector, None, dial_loop=dial_loop))
    try:
        assert await get(health.url + "/livez") == (200, "ok\n")
        await connector.stop()
        await asyncio.wait_for(dial_loop, WAIT)
        assert await get(health.url + "/livez") == (503, "[-]dial-loop failed: the relay dial loop has ended\n")
    finally:
        await health.stop()
