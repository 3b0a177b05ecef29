"""``kube_aad_proxy.limits`` in the agent's YAML: parsed into KubeAadProxyConfig
keyword arguments, and a bad value stops arc-agent with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import AgentConfigError, agent_config_from_dict
from certs import CertificateAuthority, generate_key_pair, write_pem_pair


def _config(tmp: Path, limits: Any) -> dict[str, Any]:
    ca = CertificateAuthority.create("edge config CA")
    cert, key = write_pem_pair(tmp, "serving", ca.issue_server(["kube-aad-proxy.local"]))
    (tmp / "ca.crt").write_bytes(ca.certificate_pem)
    (tmp / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    return {"relay": {"url": "https://127.0.0.1:1"}, "cluster": {"resource_group": "rg", "name": "c"},
            "agent_key_file": str(tmp / "agent.key"),
            "kube_aad_proxy": {"serving_cert_file": str(cert), "serving_key_file": str(key),
                               "upstream_url": "https://127.0.0.1:2", "upstream_ca_file": str(tmp / "ca.crt"),
                               "limits": limits}}


def test_agent_config_reads_kube_aad_proxy_limits(tmp_path: Path) -> None:
    """Each limits key becomes the KubeAadProxyConfig field it names."""
    config = agent_config_from_dict(_config(tmp_path, {
        "head_timeout_seconds": 5, "tls_handshake_timeout_seconds": 2, "max_preauth_connections": 9,
        "idle_timeout_seconds": 60}))
    assert config.kube_aad_proxy.limits == {"head_timeout": 5.0, "tls_handshake_timeout": 2.0,
                                            "max_preauth_connections": 9, "idle_timeout": 60.0}


@pytest.mark.parametrize(("limits", "message"), [
    ({"head_timeout": 5}, "kube_aad_proxy.limits.head_timeout: unknown key 'head_timeout'; "
                          "did you mean 'head_timeout_seconds'?"),
    ({"max_preauth_connections": "many"},
     "kube_aad_proxy.limits.max_preauth_connections: expected a whole number, got 'many'"),
    ([1], "kube_aad_proxy.limits: expected a mapping, got [1]"),
])
def test_agent_config_refuses_bad_kube_aad_proxy_limits(tmp_path: Path, limits: Any, message: str) -> None:
    """Unknown keys and non-numbers are one-line config errors."""
    with pytest.raises(AgentConfigError) as info:
        agent_config_from_dict(_config(tmp_path, limits))
    assert str(info.value) == f"agent config: {message}"


def test_agent_cli_reports_out_of_range_limit_in_one_line(tmp_path: Path) -> None:
    """max_preauth_connections: 0 stops arc-agent with one line naming the file and the key."""
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, {"max_preauth_connections": 0})))
    result = subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr == (f"arc-agent: {path}: kube_aad_proxy.limits.max_preauth_connections: "
                             "expected a whole number >= 1, got 0\n"), result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_agent_config_reads_kube_aad_proxy_pop(tmp_path: Path) -> None:
    """kube_aad_proxy.pop: required, targets and max_age_seconds become KubeAadProxyConfig
    arguments; unset keys keep the defaults (not required, the serving certificate's names)."""
    doc = _config(tmp_path, {})
    doc["kube_aad_proxy"]["pop"] = {"required": True, "targets": ["a.example"], "max_age_seconds": 120}
    assert agent_config_from_dict(doc).kube_aad_proxy.pop == {
        "require_pop": True, "pop_targets": frozenset({"a.example"}), "pop_max_age": 120.0}
    assert agent_config_from_dict(_config(tmp_path, {})).kube_aad_proxy.pop == {
        "require_pop": False, "pop_targets": None, "pop_max_age": 300.0}
