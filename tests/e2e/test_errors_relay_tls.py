"""A wrong ``relay.ca_file`` against the real relay: arcctl and arc-proxy say
that certificate verification failed and name the file, not "is it running?"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from certs import CertificateAuthority
from demo import DemoEnvironment
from tests.support.processes import ROOT, child_env

pytestmark = pytest.mark.e2e


def _config_with_other_ca(env: DemoEnvironment, tmp_path: Path) -> tuple[Path, Path]:
    other_ca = tmp_path / "not-the-relay-ca.crt"
    other_ca.write_bytes(CertificateAuthority.create("a CA that did not sign the relay").certificate_pem)
    doc = yaml.safe_load(env.client_config_path.read_text())
    doc["relay"]["ca_file"] = str(other_ca)
    path = tmp_path / "wrong-ca-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, other_ca


def _run(module: str, *args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=child_env(ARC_CONFIG=str(config)))


@pytest.mark.parametrize("command", [("client.arcctl", "list"),
                                     ("client.proxy_cli", "-n", "demo", "--port", "0")])
def test_wrong_relay_ca_file_is_named_as_the_cause(demo_env: DemoEnvironment, tmp_path: Path,
                                                   command: tuple[str, ...]) -> None:
    """arcctl list / arc-proxy with a relay.ca_file that did not sign the relay's
    certificate: one line, exit 3, naming TLS verification and the file."""
    config, other_ca = _config_with_other_ca(demo_env, tmp_path)
    extra = ("--file", str(tmp_path / "kubeconfig")) if command[0] == "client.proxy_cli" else ()
    r = _run(*command, *extra, config=config)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"TLS certificate verification failed for {demo_env.relay_url}" in lines[0]
    assert f"check relay.ca_file ({other_ca})" in lines[0]
    assert "is it running" not in lines[0]
    assert not (tmp_path / "kubeconfig").exists()
