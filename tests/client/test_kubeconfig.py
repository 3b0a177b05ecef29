"""kubeconfig merge: same-name entries replaced, the rest untouched, atomic 0600 writes."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
import yaml

from client import kubeconfig

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _entry(context: str = "demo", port: int = 47011, token: str = "t1") -> kubeconfig.KubeconfigEntry:
    return kubeconfig.KubeconfigEntry(context=context, server=f"https://127.0.0.1:{port}", ca_pem=CA,
                                      tls_server_name="demo.kube-aad-proxy.local",
                                      user=kubeconfig.token_user(token))


def _existing() -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": "prod", "cluster": {"server": "https://prod:6443"}}],
        "users": [{"name": "prod-admin", "user": {"token": "keep-me"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod-admin"}}],
        "preferences": {"colors": True},
        "extensions": [{"name": "x", "extension": {"a": 1}}],
    }


def test_kubeconfig_merge_adds_entries_and_keeps_others(tmp_path: Path) -> None:
    """Merging adds cluster/user/context, sets current-context, keeps everything else."""
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(_existing()))
    doc = kubeconfig.load(path)
    previous = kubeconfig.merge(doc, _entry())
    kubeconfig.write_atomic(path, doc)
    out = yaml.safe_load(path.read_text())
    assert previous == "prod"
    assert out["current-context"] == "demo"
    assert [c["name"] for c in out["clusters"]] == ["prod", "demo"]
    demo = out["clusters"][1]["cluster"]
    assert demo["server"] == "https://127.0.0.1:47011"
    assert base64.b64decode(demo["certificate-authority-data"]) == CA
    assert demo["tls-server-name"] == "demo.kube-aad-proxy.local"
    assert out["users"][0] == {"name": "prod-admin", "user": {"token": "keep-me"}}
    assert out["contexts"][1] == {"name": "demo", "context": {"cluster": "demo", "user": "arc-user-demo"}}
    assert out["preferences"] == {"colors": True} and out["extensions"] == _existing()["extensions"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_kubeconfig_merge_replaces_same_name_entries_in_place(tmp_path: Path) -> None:
    """A second merge with the same context replaces the entries, no duplicates."""
    doc = kubeconfig.load(tmp_path / "missing")
    kubeconfig.merge(doc, _entry(port=1111, token="old"))
    kubeconfig.merge(doc, _entry(port=2222, token="new"))
    assert len(doc["clusters"]) == len(doc["users"]) == len(doc["contexts"]) == 1
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:2222"
    assert doc["users"][0]["user"] == {"token": "new"}


def test_kubeconfig_restore_puts_back_previous_context_only_if_still_ours(tmp_path: Path) -> None:
    """On exit current-context goes back to the previous one, unless the user switched."""
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(_existing()))
    doc = kubeconfig.load(path)
    prev = kubeconfig.merge(doc, _entry())
    kubeconfig.write_atomic(path, doc)
    assert kubeconfig.restore_current_context(path, "demo", prev)
    assert yaml.safe_load(path.read_text())["current-context"] == "prod"
    # The user switched contexts meanwhile: leave it alone.
    doc = kubeconfig.load(path)
    kubeconfig.merge(doc, _entry())
    doc["current-context"] = "other"
    kubeconfig.write_atomic(path, doc)
    assert not kubeconfig.restore_current_context(path, "demo", "prod")
    assert yaml.safe_load(path.read_text())["current-context"] == "other"


def test_kubeconfig_restore_unsets_context_when_there_was_none(tmp_path: Path) -> None:
    """A fresh kubeconfig has no current-context after arc-proxy exits."""
    path = tmp_path / "config"
    doc = kubeconfig.load(path)
    prev = kubeconfig.merge(doc, _entry())
    kubeconfig.write_atomic(path, doc)
    assert prev is None
    kubeconfig.restore_current_context(path, "demo", prev)
    assert "current-context" not in yaml.safe_load(path.read_text())


def test_kubeconfig_default_path_follows_kubeconfig_env_like_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$KUBECONFIG: single entry, first existing, else last; unset: ~/.kube/config."""
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("KUBECONFIG", str(a))
    assert kubeconfig.default_kubeconfig_path() == a
    monkeypatch.setenv("KUBECONFIG", f"{a}:{b}")
    assert kubeconfig.default_kubeconfig_path() == b
    b.write_text("")
    a.write_text("")
    assert kubeconfig.default_kubeconfig_path() == a
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kubeconfig.default_kubeconfig_path() == tmp_path / ".kube" / "config"


def test_kubeconfig_exec_user_is_a_v1_exec_plugin() -> None:
    """The exec user is a client.authentication.k8s.io/v1 plugin that never prompts."""
    user = kubeconfig.exec_user("/x/arcctl", ["get-token"], {"ARC_CONFIG": "/c"})
    spec = user["exec"]
    assert spec["apiVersion"] == "client.authentication.k8s.io/v1"
    assert spec["interactiveMode"] == "Never"
    assert spec["command"] == "/x/arcctl" and spec["args"] == ["get-token"]
    assert spec["env"] == [{"name": "ARC_CONFIG", "value": "/c"}]


def test_kubeconfig_load_refuses_non_mapping(tmp_path: Path) -> None:
    """A kubeconfig that is not a mapping is a one-line ConfigError."""
    path = tmp_path / "config"
    path.write_text("- just\n- a list\n")
    with pytest.raises(kubeconfig.ConfigError, match="not a kubeconfig"):
        kubeconfig.load(path)


def test_kubeconfig_proxy_url_shape_and_back_to_direct(tmp_path: Path) -> None:
    """proxy-url mode writes proxy-url and a never-resolving server naming the
    cluster (TLS still checks tls-server-name); a direct merge drops proxy-url."""
    host = kubeconfig.proxy_server_host("Lab_1", "edge.One")
    assert host == "edge.one.lab-1.arc-proxy.invalid"
    doc = kubeconfig.load(tmp_path / "missing")
    kubeconfig.merge(doc, kubeconfig.KubeconfigEntry(
        context="demo", server=f"https://{host}", ca_pem=CA, tls_server_name="demo.kube-aad-proxy.local",
        user=kubeconfig.token_user("t"), proxy_url="http://127.0.0.1:47011"))
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == f"https://{host}" and cluster["proxy-url"] == "http://127.0.0.1:47011"
    assert cluster["tls-server-name"] == "demo.kube-aad-proxy.local"
    kubeconfig.merge(doc, _entry())
    assert "proxy-url" not in doc["clusters"][0]["cluster"]


def test_kubeconfig_cluster_address_defaults_to_proxy_url_and_falls_back_without_server_name() -> None:
    """proxy-url (arc-proxy's default) names the cluster's .invalid host and
    arc-proxy's port as proxy-url; without a tlsServerName the default falls
    back to direct, while an explicit --kubeconfig-mode proxy-url is a one-line
    error naming the fix; direct is always server https://127.0.0.1:PORT."""
    from client import proxy_cli
    from client.errors import CliError

    assert proxy_cli.DEFAULT_KUBECONFIG_MODE == "proxy-url"
    assert proxy_cli.build_parser().parse_args(["-n", "x"]).kubeconfig_mode is None
    host = kubeconfig.proxy_server_host("lab", "edge-1")
    assert kubeconfig.cluster_address("proxy-url", "lab/edge-1", host, 4711, "edge-1.local") == (
        "https://edge-1.lab.arc-proxy.invalid", "http://127.0.0.1:4711")
    assert kubeconfig.cluster_address("direct", "lab/edge-1", host, 4711, "edge-1.local") == (
        "https://127.0.0.1:4711", None)
    assert kubeconfig.cluster_address("proxy-url", "lab/edge-1", host, 4711, None, explicit=False) == (
        "https://127.0.0.1:4711", None)
    with pytest.raises(CliError, match=r"lab/edge-1 has no tlsServerName.*--kubeconfig-mode direct"):
        kubeconfig.cluster_address("proxy-url", "lab/edge-1", host, 4711, None)
