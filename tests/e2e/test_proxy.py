"""arc-proxy behaviour seen from outside: several at once, --token (service
account), `--file -`, and what is left in the kubeconfig on exit."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
import yaml

from demo import DemoEnvironment
from tests.support.e2e import Kubectl, Proxy, start_proxy
from tests.support.kubectl import require_kubectl
from tests.support.processes import ChildProcess, child_env

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]


def test_arc_proxy_two_at_once_with_token_and_restore(demo_env: DemoEnvironment, proxy: Proxy,
                                                      tmp_path: Path) -> None:
    """A second arc-proxy (own port, context and --token) serves next to the
    session one; on Ctrl-C it puts current-context back and keeps other entries."""
    kc = tmp_path / "config"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "mine",
        "clusters": [{"name": "mine", "cluster": {"server": "https://10.9.9.9:6443"}}],
        "users": [{"name": "me", "user": {"token": "abc"}}],
        "contexts": [{"name": "mine", "context": {"cluster": "mine", "user": "me"}}],
    }))
    second = start_proxy(demo_env.client_config_path, kc, "--token", demo_env.agent_token,
                         "--kube-context", "demo-sa")
    assert second.port != proxy.port
    try:
        doc = yaml.safe_load(kc.read_text())
        assert doc["current-context"] == "demo-sa"
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        k = Kubectl(require_kubectl("1.33"), kc)
        who = k.text("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
        assert who == "system:serviceaccount:cluster-connect:arc-agent"
        # The session proxy (OIDC user through the exec plugin) works at the same time.
        first = Kubectl(require_kubectl("1.33"), proxy.kubeconfig)
        assert "demo" in first.text("get", "namespaces")
    finally:
        assert second.stop() == 0
    doc = yaml.safe_load(kc.read_text())
    assert doc["current-context"] == "mine"
    assert {c["name"] for c in doc["contexts"]} == {"mine", "demo-sa"}
    assert doc["users"][0] == {"name": "me", "user": {"token": "abc"}}


def test_arc_proxy_file_dash_prints_kubeconfig(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """`--file -` prints a kubeconfig on stdout and writes no file."""
    home = tmp_path / "home"
    home.mkdir()
    p = ChildProcess.start(
        [sys.executable, "-m", "client.proxy_cli", "-n", "demo", "--port", "0", "--file", "-"],
        ready="printed on stdout", ready_on="stderr", name="arc-proxy",
        env=child_env(ARC_CONFIG=str(demo_env.client_config_path), HOME=str(home)))
    try:
        p.out.wait_for("current-context", 5)
        doc = yaml.safe_load("\n".join(p.out.seen))
        assert doc["current-context"] == "demo"
        assert doc["clusters"][0]["cluster"]["tls-server-name"]
        assert "get-token" in doc["users"][0]["user"]["exec"]["args"]
    finally:
        p.stop()
    assert not (home / ".kube").exists()


def test_arc_proxy_sigterm_restores_current_context(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """SIGTERM (as from systemd or kill) ends arc-proxy cleanly: exit 0 and the
    kubeconfig's current-context is put back."""
    import signal

    kc = tmp_path / "config"
    kc.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "before",
                                  "clusters": [], "users": [], "contexts": []}))
    p = start_proxy(demo_env.client_config_path, kc)
    assert yaml.safe_load(kc.read_text())["current-context"] == "demo"
    assert p.stop(signal.SIGTERM) == 0
    assert yaml.safe_load(kc.read_text())["current-context"] == "before"
