"""Client config loading/writing and ``-o json|yaml|table`` rendering."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from client.config import AuthConfig, ClientConfig, default_config_path, load_config, write_config
from client.errors import ConfigError
from client.output import render


def test_client_config_roundtrips_with_mode_0600(tmp_path: Path) -> None:
    """write_config then load_config gives the same values; the file is private."""
    cfg = ClientConfig(relay_url="https://127.0.0.1:8443", relay_ca_file="/ca.crt",
                       resource_group="rg1", auth=AuthConfig(token_endpoint="https://idp/token",
                                                             username="u", password="p"))
    path = write_config(cfg, tmp_path / "sub" / "config.yaml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = load_config(path)
    assert (back.relay_url, back.relay_ca_file, back.resource_group) == (
        "https://127.0.0.1:8443", "/ca.crt", "rg1")
    assert back.auth.username == "u" and back.auth.password == "p"


def test_client_config_missing_file_names_the_fix(tmp_path: Path) -> None:
    """A missing config is one line that says how to get one."""
    with pytest.raises(ConfigError, match="arcctl demo"):
        load_config(tmp_path / "nope.yaml")


def test_client_config_without_relay_url_is_refused(tmp_path: Path) -> None:
    """relay.url is required."""
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"relay": {}}))
    with pytest.raises(ConfigError, match=r"relay\.url"):
        load_config(p)


def test_client_config_path_respects_arc_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$ARC_CONFIG wins; otherwise XDG_CONFIG_HOME/cluster-connect/config.yaml."""
    monkeypatch.setenv("ARC_CONFIG", str(tmp_path / "x.yaml"))
    assert default_config_path() == tmp_path / "x.yaml"
    monkeypatch.delenv("ARC_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_path() == tmp_path / "cluster-connect" / "config.yaml"


def test_output_renders_json_yaml_table() -> None:
    """The three formats render the same clusters."""
    rows = [{"name": "demo", "resourceGroup": "default", "connectivityStatus": "Connected",
             "agentPublicKeyCertificate": "PEM"}]
    assert json.loads(render(rows, "json")) == rows
    assert yaml.safe_load(render(rows, "yaml")) == rows
    table = render(rows, "table").splitlines()
    assert table[0].split() == ["NAME", "RESOURCEGROUP", "CONNECTIVITYSTATUS"]
    assert table[1].split() == ["demo", "default", "Connected"]
    assert render([], "table") == "No resources found."
