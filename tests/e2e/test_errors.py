"""arc-proxy against the real relay: user errors are one line, non-zero exit,
no traceback — unknown cluster, port in use, relay down, agent offline, bad
token, no role."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from demo import DemoEnvironment
from tests.support.processes import ROOT, child_env
from tests.support.waits import wait_until

pytestmark = pytest.mark.e2e


def _arc_proxy(env: DemoEnvironment, tmp_path: Path, *args: str, config: Path | None = None,
               port: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.proxy_cli", "--port", str(port),
         "--file", str(tmp_path / "kubeconfig"), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=child_env(ARC_CONFIG=str(config or env.client_config_path)))


def _one_line(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("arc-proxy:")]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]


def _config_with_auth(env: DemoEnvironment, tmp_path: Path, auth: dict[str, str]) -> Path:
    doc = yaml.safe_load(env.client_config_path.read_text())
    doc["auth"] = {**doc["auth"], **auth}
    path = tmp_path / "other-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_arc_proxy_unknown_cluster_is_one_line(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """`-n nope`: the relay has no such cluster (to a user without a role on
    that scope the relay does not reveal whether it exists)."""
    _one_line(_arc_proxy(demo_env, tmp_path, "-n", "nope"), "cluster default/nope does not exist")
    assert not (tmp_path / "kubeconfig").exists()


def test_arc_proxy_port_in_use_is_one_line(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """A taken --port."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        _one_line(_arc_proxy(demo_env, tmp_path, "-n", "demo", port=port), "in use")


def test_arc_proxy_invalid_token_is_one_line(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """A token the relay cannot validate (token_command printing garbage)."""
    cfg = _config_with_auth(demo_env, tmp_path, {"token_command": "echo not-a-jwt"})
    _one_line(_arc_proxy(demo_env, tmp_path, "-n", "demo", config=cfg), "refused the token")


def test_arc_proxy_without_role_is_one_line(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """bob has no role assignment on the demo cluster."""
    cfg = _config_with_auth(demo_env, tmp_path, {"username": "bob@contoso.example",
                                                 "password": "bob-password"})
    _one_line(_arc_proxy(demo_env, tmp_path, "-n", "demo", config=cfg), "ask an admin")


def test_arc_proxy_relay_down_is_one_line(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """The relay is stopped."""
    demo_env.stop_relay()
    try:
        _one_line(_arc_proxy(demo_env, tmp_path, "-n", "demo"), "cannot reach the relay")
    finally:
        demo_env.start_relay()
        demo_env.wait_connected()


def test_arc_proxy_agent_offline_is_one_line(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """The agent is stopped: the registration says Offline (or the probe is refused)."""
    demo_env.stop_agent()
    try:
        wait_until(lambda: asyncio.run(demo_env.cluster_status()) == "Offline", "the cluster to be Offline")
        _one_line(_arc_proxy(demo_env, tmp_path, "-n", "demo"), "offline")
    finally:
        demo_env.start_agent()
        demo_env.wait_connected()


def test_arc_proxy_viewer_without_cluster_user_is_refused_at_open(demo_env: DemoEnvironment,
                                                                   tmp_path: Path) -> None:
    """bob gets `viewer` (may read the registration) but not `cluster-user`: the
    relay refuses the stream OPEN with FORBIDDEN, shown as one line."""
    from client.auth import TokenSource
    from client.relay_client import RelayApi

    async def grant() -> None:
        cfg = demo_env.admin_config()
        async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
            await api.put_role_assignment("e2e-bob-viewer", {
                "principalId": "7a338408-e16c-4e47-9de2-1202ff0e1eaa", "principalType": "User",
                "role": "viewer", "scope": "/resourceGroups/default/clusters/demo"})
    asyncio.run(grant())
    cfg = _config_with_auth(demo_env, tmp_path, {"username": "bob@contoso.example",
                                                 "password": "bob-password"})
    _one_line(_arc_proxy(demo_env, tmp_path, "-n", "demo", config=cfg), "cluster-user")
