"""``oidc.group_source`` parsing (relay and agent configs share it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfigError, agent_config_from_dict
from certs import CertificateAuthority, generate_key_pair, write_pem_pair
from identity import HttpGroupResolver, parse_group_source
from relay.config import ConfigError, relay_config_from_dict

SECTION: dict[str, Any] = {"token_endpoint": "https://idp.example/t/oauth2/v2.0/token", "client_id": "reader",
           "scope": "https://graph.microsoft.com/.default", "allowed_hosts": ["graph.example"],
           "endpoint_template": "https://graph.example/v1.0/users/{oid}/getMemberObjects"}


def test_group_source_parses_secret_file_and_builds_resolver(tmp_path: Path) -> None:
    """A secret file (relative to the config's folder) is read and stripped;
    the settings build an HttpGroupResolver; repr never shows the secret."""
    (tmp_path / "s.secret").write_text("hunter2\n")
    settings = parse_group_source({**SECTION, "client_secret_file": "s.secret"}, tmp_path)
    assert settings is not None and settings.client_secret == "hunter2"
    assert settings.allowed_hosts == ("graph.example",)
    assert "hunter2" not in repr(settings)
    assert isinstance(settings.build(), HttpGroupResolver)


@pytest.mark.parametrize(("change", "message"), [
    ({"client_id": None, "client_secret": "x"}, "oidc.group_source.client_id: required key is missing"),
    ({}, "oidc.group_source: needs client_secret_file (or client_secret)"),
    ({"client_secret": "x", "token_endpoint": "http://idp/token"},
     "oidc.group_source.token_endpoint: expected an https:// URL, got 'http://idp/token'"),
    ({"client_secret": "x", "allowed_hosts": "graph.example"},
     "oidc.group_source.allowed_hosts: expected a list, got 'graph.example'"),
    ({"client_secret_file": "missing.secret"}, "oidc.group_source.client_secret_file: cannot read "),
])
def test_group_source_refuses_bad_sections_in_one_line(tmp_path: Path, change: dict[str, object],
                                                       message: str) -> None:
    """Each mistake is one ConfigError line naming the key."""
    raw = {k: v for k, v in {**SECTION, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse_group_source(raw, tmp_path)
    assert str(info.value).startswith(f"config: {message}")
    assert "\n" not in str(info.value)


def test_group_source_absent_means_none(tmp_path: Path) -> None:
    """No section: no resolver (overage tokens are then refused, fail closed)."""
    assert parse_group_source(None, tmp_path) is None
    assert parse_group_source({}, tmp_path) is None


def test_relay_and_agent_configs_read_group_source(tmp_path: Path) -> None:
    """Both config files accept ``oidc.group_source``; a bad one is their config error."""
    oidc: dict[str, Any] = {"issuers": [{"issuer": "https://idp.example/t/v2.0", "tenant_ids": ["t"]}],
            "group_source": {**SECTION, "client_secret": "x"}}
    relay = relay_config_from_dict({"oidc": oidc}, base_dir=tmp_path)
    assert relay.group_source is not None and relay.issuers[0].tenant_ids == ("t",)
    with pytest.raises(ConfigError, match="group_source"):
        relay_config_from_dict({"oidc": {**oidc, "group_source": {"client_id": "x"}}}, base_dir=tmp_path)

    keys = generate_key_pair("rg/c")
    (tmp_path / "agent.key").write_bytes(keys.private_key_pem)
    ca = CertificateAuthority.create("t")
    write_pem_pair(tmp_path, "serving", ca.issue_server(["x"], ["127.0.0.1"]))
    (tmp_path / "ca.crt").write_bytes(ca.certificate_pem)
    agent: dict[str, Any] = {"relay": {"url": "https://relay.example"}, "cluster": {"resource_group": "rg", "name": "c"},
             "agent_key_file": "agent.key",
             "kube_aad_proxy": {"serving_cert_file": "serving.crt", "serving_key_file": "serving.key",
                                "upstream_url": "https://127.0.0.1:6443", "upstream_ca_file": "ca.crt",
                                "oidc": oidc, "impersonate_with": "upn"}}
    cfg = agent_config_from_dict(agent, base_dir=tmp_path)
    assert cfg.kube_aad_proxy.group_source is not None and cfg.kube_aad_proxy.impersonate_with == "upn"
    agent["kube_aad_proxy"]["oidc"] = {**oidc, "group_source": {**SECTION}}
    with pytest.raises(AgentConfigError, match=r"kube_aad_proxy\.oidc\.group_source"):
        agent_config_from_dict(agent, base_dir=tmp_path)
