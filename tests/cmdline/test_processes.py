"""The four commands as real processes: ``--version``, and Ctrl-C / SIGTERM
while a command waits on the network (a loopback listener that accepts and
never answers): exit 130 / 143, no traceback, nothing half-printed."""

from __future__ import annotations

import importlib.metadata
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MODULES = {
    "arc-relay": "relay.cli",
    "arc-agent": "agent.cli",
    "arc-proxy": "client.proxy_cli",
    "arcctl": "client.arcctl",
}


@pytest.mark.parametrize("prog", list(MODULES))
def test_version_prints_prog_and_the_installed_version(prog: str) -> None:
    """``PROG --version``: "PROG X.Y.Z" from the installed distribution, exit 0."""
    result = subprocess.run([sys.executable, "-m", MODULES[prog], "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{prog} {importlib.metadata.version('cluster-connect')}\n"
    assert result.stderr == ""


def _client_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "relay": {"url": f"https://127.0.0.1:{port}"},
        "resource_group": "default",
        "auth": {"token_command": "echo not-a-real-token"},
    }))
    return path


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_arcctl_stopped_while_waiting_on_the_relay_exits_quietly(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """arcctl list waits on a relay that accepted the connection but never
    answers; the signal ends it with its exit code and an empty stderr."""
    with socket.create_server(("127.0.0.1", 0)) as relay:
        relay.settimeout(60)
        port = relay.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "client.arcctl", "list", "--config", str(_client_config(tmp_path, port))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # As from a terminal: a suite started in the background by a
            # non-interactive shell ignores SIGINT, and children inherit that.
            preexec_fn=_default_signals)
        try:
            conn, _ = relay.accept()
            with conn:
                # Its TLS ClientHello: arcctl is now inside its awaited request
                # (accept alone can return before arcctl's connect has returned).
                conn.settimeout(60)
                assert conn.recv(1), "arcctl closed before sending its request"
                proc.send_signal(sig)
                out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == code, err
    assert err == "" and out == ""
