"""arc-proxy and arcctl report user errors as one line and a non-zero exit,
never a traceback (real processes, real sockets on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=60, env=full_env, cwd=ROOT)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, relay_port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "relay": {"url": f"https://127.0.0.1:{relay_port}"},
        "resource_group": "default",
        "auth": {"token_command": "echo not-a-real-token"},
    }))
    return path


def _assert_one_line(result: subprocess.CompletedProcess[str], prog: str, needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}:")]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]


def test_arc_proxy_reports_missing_config_in_one_line(tmp_path: Path) -> None:
    """No client config: one line naming the file and the fix."""
    r = _run("client.proxy_cli", "-n", "demo", "--port", "0", "--file", str(tmp_path / "kc"),
             env={"ARC_CONFIG": str(tmp_path / "missing.yaml")})
    _assert_one_line(r, "arc-proxy", "no client config")


def test_arc_proxy_reports_port_in_use_in_one_line(tmp_path: Path) -> None:
    """A taken local port: one line naming the port and --port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _run("client.proxy_cli", "-n", "demo", "--port", str(port), "--file", str(tmp_path / "kc"),
                 "--config", str(_config(tmp_path, _closed_port())))
    _assert_one_line(r, "arc-proxy", f"port {port} on 127.0.0.1 is in use")


def test_arc_proxy_reports_relay_unreachable_in_one_line(tmp_path: Path) -> None:
    """Nothing listens at relay.url: one line saying the relay cannot be reached."""
    r = _run("client.proxy_cli", "-n", "demo", "--port", "0", "--file", str(tmp_path / "kc"),
             "--config", str(_config(tmp_path, _closed_port())))
    _assert_one_line(r, "arc-proxy", "cannot reach the relay")
    assert not (tmp_path / "kc").exists()


def test_arcctl_list_reports_relay_unreachable_in_one_line(tmp_path: Path) -> None:
    """arcctl list against a dead relay: one line, non-zero exit."""
    r = _run("client.arcctl", "list", "--config", str(_config(tmp_path, _closed_port())))
    _assert_one_line(r, "arcctl list", "cannot reach the relay")


def test_arcctl_get_token_prints_exec_credential(tmp_path: Path) -> None:
    """get-token prints a client.authentication.k8s.io/v1 ExecCredential with an expiry."""
    import json

    r = _run("client.arcctl", "get-token", "--config", str(_config(tmp_path, _closed_port())),
             env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    cred = json.loads(r.stdout)
    assert cred["apiVersion"] == "client.authentication.k8s.io/v1"
    assert cred["kind"] == "ExecCredential"
    assert cred["status"]["token"] == "not-a-real-token"
    assert cred["status"]["expirationTimestamp"].endswith("Z")


def test_refusal_error_maps_stream_codes_to_user_errors() -> None:
    """Each OPEN refusal code becomes the matching one-line error class."""
    from client.errors import AgentOffline, ClusterNotFound, Forbidden
    from client.listener import refusal_error
    from tunnel import ErrorCode

    assert isinstance(refusal_error(ErrorCode.TARGET_UNAVAILABLE, "", "rg/x"), AgentOffline)
    assert isinstance(refusal_error(ErrorCode.FORBIDDEN, "no role", "rg/x"), Forbidden)
    assert isinstance(refusal_error(ErrorCode.NOT_FOUND, "", "rg/x"), ClusterNotFound)
    assert isinstance(refusal_error(ErrorCode.CONNECT_FAILED, "", "rg/x"), AgentOffline)
    assert "offline" in str(refusal_error(ErrorCode.TARGET_UNAVAILABLE, "", "rg/x"))
