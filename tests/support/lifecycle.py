"""The lifecycle tests' environment: sandbox API server, sandbox IdP and a
relay as processes (through ``demo.DemoEnvironment``'s pieces, but with
no cluster registered), ``arcctl`` run as a process, an exec-plugin
kubeconfig, and ``arc-agent`` started from what ``arcctl connect`` stored in
the cluster. Its own children (a second relay, the agents) are
``ChildProcess``es: a relay on port 0 prints the URL it got.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from client.auth import TokenSource
from client.config import ClientConfig, write_config
from client.relay_client import RelayApi
from demo import DemoEnvironment
from tests.support.processes import ChildProcess, child_env

ALICE, ALICE_PASSWORD = "alice@contoso.example", "alice-password"
ALICE_OID = "3f1c8e52-6b0e-4a8f-9d41-5c2a7e9b1d60"
GROUP = "lab"
# Relay heartbeat for the tests: a silent agent is pinged after 0.5 s and
# declared dead 2 s later (defaults: 20 s + 20 s).
RELAY_TUNNEL = {"ping_interval": 0.5, "ping_timeout": 2.0}
# arc-agent logs this once its kube-aad-proxy serves (agent/cli.py); it dials the relay next.
AGENT_READY = "kube-aad-proxy listening on"


class LifecycleEnv:
    """Processes and files of one lifecycle test module."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.demo = DemoEnvironment(base / "state", client_config_path=base / "admin-config.yaml")
        # The second relay and the agents, by name (stopped together).
        self.children: dict[str, ChildProcess] = {}

    # -- start/stop ----------------------------------------------------------------
    def start(self) -> None:
        d = self.demo
        d.start_apiserver()
        d.start_idp()
        self.relay_config_path = d.write_relay_config()
        cfg = yaml.safe_load(self.relay_config_path.read_text())
        cfg["limits"]["tunnel"] = dict(RELAY_TUNNEL)
        self.relay_config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        d.start_relay()
        self.relay_ca_file = str(d.dir / "relay" / "ca.crt")
        write_config(d.admin_config(), self.base / "admin-config.yaml")
        # alice onboards clusters in resource group "lab" with the onboarding role only.
        asyncio.run(self.admin_call(lambda api: api.put_role_assignment("alice-onboarding-lab", {
            "principalId": ALICE_OID, "principalType": "User", "role": "onboarding",
            "scope": f"/resourceGroups/{GROUP}"})))
        self.alice_config = self.write_client_config("alice-config.yaml")
        self.kubeconfig = self.write_exec_kubeconfig()
        self.admin_kubeconfig = str(d.api["admin_kubeconfig_path"])

    def start_second_relay(self) -> tuple[str, Path, Path]:
        """Another relay (another "region") with its own database, same IdP and TLS.

        Returns:
            (its URL, an admin client config for it, alice's client config for it).
        """
        d = self.demo
        state = self.base / "relay-b"
        state.mkdir(exist_ok=True)
        cfg = yaml.safe_load(self.relay_config_path.read_text())
        # Port 0 and no public_url: the relay binds a free port, derives its
        # agent audience from it and prints its URL.
        cfg.pop("public_url", None)
        cfg.update({"listen": "127.0.0.1:0", "state_dir": str(state), "database": str(state / "relay.db")})
        path = state / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        child = ChildProcess.start([sys.executable, "-m", "relay.cli", "--config", str(path)],
                                   ready="arc-relay: serving ", name="relay-b")
        self.children["relay-b"] = child
        url = f"https://127.0.0.1:{child.port}"
        admin = replace(d.admin_config(), relay_url=url)
        write_config(admin, self.base / "admin-config-b.yaml")
        alice = replace(d.admin_config(), relay_url=url, resource_group=GROUP, auth=d.auth_config(ALICE, ALICE_PASSWORD))
        write_config(alice, self.base / "alice-config-b.yaml")
        return url, self.base / "admin-config-b.yaml", self.base / "alice-config-b.yaml"

    def stop(self) -> None:
        for child in self.children.values():
            child.stop()
        self.demo.stop()

    def logs(self) -> str:
        """The demo processes' log tails and this environment's children's output."""
        files = [f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}"
                 for p in sorted(self.demo.logs.glob("*.log"))]
        return "\n".join(files + [f"--- {child.output()}" for child in self.children.values()])

    # -- files -------------------------------------------------------------------
    def write_client_config(self, name: str, *, relay_ca: bool = True) -> Path:
        """alice's client config (``relay_ca=False``: trust from the environment)."""
        d = self.demo
        cfg = ClientConfig(relay_url=d.relay_url, relay_ca_file=self.relay_ca_file if relay_ca else None,
                           resource_group=GROUP, auth=d.auth_config(ALICE, ALICE_PASSWORD))
        path = self.base / name
        write_config(cfg, path)
        return path

    def write_exec_kubeconfig(self) -> str:
        """A kubeconfig whose user is a client-go exec plugin printing the sandbox admin token."""
        api = self.demo.api
        plugin = self.base / "token-plugin.py"
        cred = {"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1",
                "status": {"token": api["admin_token"]}}
        plugin.write_text(f"import json\nprint(json.dumps({cred!r}))\n")
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
            "clusters": [{"name": "sandbox", "cluster": {
                "server": api["url"],
                "certificate-authority-data": base64.b64encode(api["ca_pem"].encode()).decode()}}],
            "users": [{"name": "exec-admin", "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                "args": [str(plugin)], "interactiveMode": "Never"}}}],
            "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "exec-admin"}}],
        }
        path = self.base / "kubeconfig-exec"
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    # -- clients -------------------------------------------------------------------
    async def admin_call(self, fn: Callable[[RelayApi], Any]) -> Any:
        cfg = self.demo.admin_config()
        async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
            return await fn(api)

    def registration(self, name: str) -> dict[str, Any]:
        return dict(asyncio.run(self.admin_call(lambda api: api.get_cluster(GROUP, name))))

    def status(self, name: str) -> str:
        return str(self.registration(name).get("connectivityStatus"))

    def arcctl(self, *args: str, config: Path | None = None, stdin: str | None = None,
               env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``arcctl ARGS`` as a process (alice's config by default)."""
        full_env = child_env(ARC_CONFIG=str(config or self.alice_config),
                             XDG_CACHE_HOME=str(self.base / "cache"), **(env or {}))
        return subprocess.run([sys.executable, "-m", "client.arcctl", *args], capture_output=True,
                              text=True, env=full_env, timeout=timeout,
                              stdin=subprocess.DEVNULL if stdin is None else None, input=stdin)

    def core(self) -> k8s.CoreV1Api:
        api_client = k8s_config.new_client_from_config(config_file=self.admin_kubeconfig)  # type: ignore[no-untyped-call]
        return k8s.CoreV1Api(api_client)

    def read_agent_objects(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The agent Secret (decoded) and config (parsed) that connect stored."""
        core = self.core()
        secret = core.read_namespaced_secret("arc-agent", "arc-system")
        cm = core.read_namespaced_config_map("arc-agent", "arc-system")
        files = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        assert cm.data is not None, "connect stored an empty ConfigMap"
        return files, yaml.safe_load(cm.data["agent.yaml"])

    def service_account_token(self) -> str:
        core = self.core()
        body = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[],
                                                                             expiration_seconds=3600))
        resp = core.create_namespaced_service_account_token("arc-agent", "arc-system", body)
        assert resp.status is not None
        return str(resp.status.token)

    # -- agent ---------------------------------------------------------------------
    def start_agent(self, name: str, *, metadata_interval: float | None = None) -> ChildProcess:
        """Start ``arc-agent`` with the Secret/ConfigMap that connect stored; the
        in-cluster paths (Secret mount, ServiceAccount) are mapped to local files."""
        files, config = self.read_agent_objects()
        d = self.base / f"agent-{name}"
        shutil.rmtree(d, ignore_errors=True)
        (d / "secret").mkdir(parents=True)
        for key, text in files.items():
            (d / "secret" / key).write_text(text)
        token = d / "sa-token"
        token.write_text(self.service_account_token())
        mapping = {"/etc/cluster-connect/secret": str(d / "secret")}

        def local(path: str) -> str:
            for prefix, target in mapping.items():
                if path.startswith(prefix):
                    return target + path[len(prefix):]
            return path
        config["relay"]["ca_file"] = local(config["relay"]["ca_file"])
        config["agent_key_file"] = local(config["agent_key_file"])
        config["proxy"]["ca_file"] = local(config["proxy"]["ca_file"])
        kap = config["kube_aad_proxy"]
        for key in ("serving_cert_file", "serving_key_file"):
            kap[key] = local(kap[key])
        for issuer in kap["oidc"]["issuers"]:
            issuer["ca_file"] = local(issuer["ca_file"])
        kap["upstream_url"] = self.demo.api["url"]
        kap["upstream_ca_file"] = self.demo.api["ca_file"]
        kap["upstream_token_file"] = str(token)
        # In a pod the probes reach health on the pod's address; here: loopback, any port.
        config["health"] = {"listen": "127.0.0.1:0"}
        if metadata_interval is not None:
            config["metadata_interval_seconds"] = metadata_interval
        path = d / "agent.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        # The agent must rely on its config only: no inherited proxy or CA settings.
        env = child_env(HTTPS_PROXY="", https_proxy="", NO_PROXY="", no_proxy="", SSL_CERT_FILE="")
        child = ChildProcess.start([sys.executable, "-m", "agent.cli", "--config", str(path)],
                                   ready=AGENT_READY, ready_on="stderr", name=f"agent-{name}", env=env)
        self.children[name] = child
        return child

    def stop_agent(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is not None:
            child.stop()


def sandbox_nodes(env: LifecycleEnv) -> tuple[int, int]:
    """(node count, total cores) of the sandbox, read with the kubernetes client."""
    nodes = env.core().list_node().items
    cores = 0
    for node in nodes:
        assert node.status is not None and node.status.capacity is not None
        cores += int(node.status.capacity["cpu"])
    return len(nodes), cores


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@contextmanager
def running_lifecycle_env(base: Path) -> Iterator[LifecycleEnv]:
    """A started ``LifecycleEnv`` in ``base`` (sandbox API server, IdP and relay,
    no cluster registered), stopped on exit; its logs are the error when it does
    not start."""
    env = LifecycleEnv(base)
    try:
        env.start()
    except BaseException:
        logs = env.logs()
        env.stop()
        raise AssertionError(f"environment did not start:\n{logs}") from None
    try:
        yield env
    finally:
        env.stop()
