"""Outbound proxy end to end: ``arcctl connect --proxy-https`` stores the proxy
in the agent's ConfigMap and the agent reaches the relay through a real
forward proxy (Debian's tinyproxy) on loopback, once with the relay's CA from
the client config and once with the relay's CA known only from ``--proxy-cert``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lifecycle import GROUP, LifecycleEnv, running_lifecycle_env
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(120)

TINYPROXY = shutil.which("tinyproxy")


def _unused_port() -> int:
    """A port free right now, for tinyproxy alone: it takes its port from its
    config file only (no port 0, it reports no address), so here, and only
    here, a port is picked by binding and closing a socket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tinyproxy:
    """tinyproxy in the foreground on 127.0.0.1, CONNECT allowed to one port."""

    def __init__(self, base: Path, connect_port: int) -> None:
        self.port = _unused_port()
        self.log = base / "tinyproxy.log"
        conf = base / "tinyproxy.conf"
        conf.write_text("\n".join([
            f"Port {self.port}", "Listen 127.0.0.1", "Timeout 60", "MaxClients 20",
            "Allow 127.0.0.1", f"ConnectPort {connect_port}", f'LogFile "{self.log}"', "LogLevel Info",
            f'PidFile "{base / "tinyproxy.pid"}"', "",
        ]))
        self.proc = subprocess.Popen([str(TINYPROXY), "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_until(self._listening, "tinyproxy to listen", timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def connects_to(self, port: int) -> int:
        """How many CONNECTs to ``127.0.0.1:port`` the proxy logged."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(f"CONNECT 127.0.0.1:{port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleEnv]:
    """Sandbox API server, IdP and relay, no cluster registered."""
    if TINYPROXY is None:
        pytest.skip("tinyproxy is not installed (apt-get install -y tinyproxy; .ci/run does)")
    with running_lifecycle_env(tmp_path_factory.mktemp("lifecycle-proxy")) as e:
        yield e


@pytest.fixture(scope="module")
def proxy(env: LifecycleEnv) -> Iterator[Tinyproxy]:
    """A forward proxy that may CONNECT only to the relay's port."""
    p = Tinyproxy(env.base, env.demo.relay_port)
    yield p
    p.stop()


def _delete(env: LifecycleEnv, name: str) -> None:
    env.stop_agent(name)
    p = env.arcctl("delete", "-n", name, "-g", GROUP, "--kube-config", env.kubeconfig, "-y")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("transport", ["aiohttp", "native"])
def test_agent_reaches_relay_through_tinyproxy(env: LifecycleEnv, proxy: Tinyproxy, transport: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--proxy-https/--proxy-skip-range land in the ConfigMap; the agent's
    websocket (on either tunnel transport) goes through tinyproxy's CONNECT
    and the cluster is Connected."""
    monkeypatch.setenv("ARC_TUNNEL_TRANSPORT", transport)
    p = env.arcctl("connect", "-n", "via-proxy", "-g", GROUP, "--kube-config", env.kubeconfig, "--no-wait",
                   "--proxy-https", proxy.url, "--proxy-skip-range", "10.0.0.0/8,.svc.cluster.local")
    assert p.returncode == 0, p.stderr
    _, config = env.read_agent_objects()
    assert config["proxy"] == {"https": proxy.url, "http": "", "no_proxy": "10.0.0.0/8,.svc.cluster.local",
                               "ca_file": ""}
    before = proxy.connects_to(env.demo.relay_port)
    env.start_agent("via-proxy")
    wait_until(lambda: env.status("via-proxy") == "Connected", "Connected through the proxy")
    assert proxy.connects_to(env.demo.relay_port) > before
    assert f"transport={transport}" in env.children["via-proxy"].err.wait_for("agent connected")
    _delete(env, "via-proxy")


@pytest.mark.parametrize("transport", ["aiohttp", "native"])
def test_agent_trusts_relay_ca_from_proxy_cert_only(env: LifecycleEnv, proxy: Tinyproxy, transport: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's certificate is signed by a custom CA that the agent learns
    only from --proxy-cert (given after --custom-ca-cert: the later one wins);
    the client config names no relay CA (arcctl trusts it via SSL_CERT_FILE).
    Either tunnel transport."""
    monkeypatch.setenv("ARC_TUNNEL_TRANSPORT", transport)
    config = env.write_client_config("alice-no-relay-ca.yaml", relay_ca=False)
    decoy = env.base / "decoy-ca.crt"
    decoy.write_text(Path(env.demo.api["ca_file"]).read_text())  # a real CA, but not the relay's
    p = env.arcctl("connect", "-n", "custom-ca", "-g", GROUP, "--kube-config", env.kubeconfig, "--no-wait",
                   "--proxy-https", proxy.url, "--custom-ca-cert", str(decoy),
                   "--proxy-cert", env.relay_ca_file, config=config,
                   env={"SSL_CERT_FILE": env.relay_ca_file})
    assert p.returncode == 0, p.stderr
    files, agent_config = env.read_agent_objects()
    assert agent_config["relay"]["ca_file"] == "" and files["relay-ca.crt"] == ""
    assert files["proxy-ca.crt"] == Path(env.relay_ca_file).read_text()
    assert agent_config["proxy"]["ca_file"].endswith("/proxy-ca.crt")
    before = proxy.connects_to(env.demo.relay_port)
    env.start_agent("custom-ca")
    wait_until(lambda: env.status("custom-ca") == "Connected", "Connected with the custom CA")
    assert proxy.connects_to(env.demo.relay_port) > before
    assert f"transport={transport}" in env.children["custom-ca"].err.wait_for("agent connected")
    _delete(env, "custom-ca")
