"""``arc-relay`` as a real process: config errors, serving, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from certs import client_ssl_context
from tests.support.processes import ChildProcess


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_relay_cli_reports_missing_config_in_one_line(tmp_path: Path) -> None:
    """A missing config file: one line naming it, exit 2, no traceback."""
    result = _run(["--config", str(tmp_path / "nope.yaml")])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_relay_cli_reports_bad_values_in_one_line(tmp_path: Path) -> None:
    """A malformed listen address and a half TLS pair are one-line errors."""
    for data in ({"listen": "nonsense"}, {"tls": {"cert_file": "x.crt"}}):
        config = tmp_path / "relay.yaml"
        config.write_text(yaml.safe_dump(data))
        result = _run(["--config", str(config)])
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("arc-relay: ") and "Traceback" not in result.stderr


def test_relay_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """arc-relay on port 0 prints the URL it serves, serves /readyz over dev
    TLS there and exits 0 on SIGTERM."""
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state")}))
    relay = ChildProcess.start([sys.executable, "-m", "relay.cli", "--config", str(config)],
                               ready="arc-relay: serving ", name="arc-relay")
    try:
        assert relay.ready_line.startswith("arc-relay: serving https://127.0.0.1:"), relay.ready_line
        assert relay.port != 0
        url = f"https://127.0.0.1:{relay.port}"
        ca = (tmp_path / "state" / "tls" / "ca.crt").read_bytes()
        ctx = client_ssl_context(ca)
        with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"{url}/openapi.json", context=ctx, timeout=10) as resp:
            assert "paths" in json.loads(resp.read())
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=30) == 0, relay.output()
    finally:
        relay.kill()


def test_relay_cli_reports_port_in_use(tmp_path: Path) -> None:
    """A port already taken is one line naming it, exit 2."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "relay.yaml"
        config.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "s")}))
        result = _run(["--config", str(config)])
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("arc-relay: cannot listen on 127.0.0.1:") and "Traceback" not in result.stderr
