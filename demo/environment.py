"""``arcctl demo``: the embedded default on loopback.

Starts, each as its own process: the sandbox API server, the sandbox OIDC
issuer, ``arc-relay`` and ``arc-agent`` (with kube-aad-proxy); registers
cluster ``default/demo``, gives the demo user ``cluster-user`` on it, writes
the client config so ``arc-proxy -n demo`` needs no flags, prints the next two
commands and stays in the foreground. Ctrl-C/SIGTERM stops every child and
removes what it created.

:class:`DemoEnvironment` is also what the end-to-end tests use (it can
restart the relay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from certs import CertificateAuthority, generate_key_pair, write_pem_pair, write_secret_file
from client.auth import TokenSource
from client.config import AuthConfig, ClientConfig, default_config_path, write_config
from client.demo_seed import SandboxAdmin, seed_demo
from client.errors import CliError
from client.procs import Child, wait_until
from client.relay_client import RelayApi

__all__ = ["DemoEnvironment", "DemoIdentity", "run_demo"]

RESOURCE_GROUP = "default"
CLUSTER = "demo"
AUDIENCE = "api://cluster-connect"
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class DemoIdentity:
    """Who is who in the sandbox issuer's built-in directory."""

    tenant_id: str
    user: str
    password: str
    user_oid: str
    admin: str
    admin_password: str
    admin_oid: str
    client_id: str
    # The service principal that reads group memberships for overage users.
    group_reader_client_id: str = ""
    group_reader_secret: str = ""


def load_demo_identity() -> DemoIdentity:
    """Read sandbox/idp/demo-users.yaml (the ids are fixed there)."""
    import sandbox.idp

    path = Path(sandbox.idp.__file__).resolve().parent / "demo-users.yaml"
    doc = yaml.safe_load(path.read_text())
    users = {u["username"]: u for u in doc["users"]}
    demo, admin = users["demo@contoso.example"], users["admin@contoso.example"]
    clients = doc.get("public_clients") or [{"client_id": "arc-cli"}]
    sps = doc.get("service_principals") or [{}]
    return DemoIdentity(
        tenant_id=str(doc["tenant_id"]), user=demo["username"], password=str(demo["password"]),
        user_oid=str(demo["oid"]), admin=admin["username"], admin_password=str(admin["password"]),
        admin_oid=str(admin["oid"]), client_id=str(clients[0]["client_id"]),
        group_reader_client_id=str(sps[0].get("client_id", "")),
        group_reader_secret=str(sps[0].get("client_secret", "")))


def free_port() -> int:
    """A currently free loopback port (the relay needs its port in its config)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoEnvironment:
    """Start/stop the demo's processes.

    Args:
        state_dir: where everything goes; ``None`` = a temp dir removed by :meth:`stop`.
        relay_port: 0 = pick a free port.
        client_config_path: where to write the client config (default ``$ARC_CONFIG``).
        say: progress printer.
        kube_version: what the sandbox API server reports.
        relay_env: extra environment for the relay (tests: the DATA recording hook).
        agent_forward_to: ``host:port`` the agent pipes streams to instead of
            kube-aad-proxy (bench/e2e.py measures the raw path with it).
        checkpoint: called between start-up steps and in every wait; raises to
            abandon the start (``arcctl demo`` raises ``DemoInterrupted`` from it
            once SIGINT/SIGTERM arrived). :meth:`stop` then cleans up.
    """

    def __init__(self, state_dir: Path | None = None, *, relay_port: int = 0,
                 client_config_path: Path | None = None, say: Any = None,
                 kube_version: str = "1.33.0", relay_env: dict[str, str] | None = None,
                 agent_forward_to: str | None = None,
                 checkpoint: Callable[[], None] | None = None) -> None:
        self.own_dir = state_dir is None
        # mkdtemp and mode 0700: keys, tokens and logs below are the user's only.
        self.dir = Path(tempfile.mkdtemp(prefix="arc-demo-")) if state_dir is None else state_dir
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs = self.dir / "logs"
        self.logs.mkdir(mode=0o700, exist_ok=True)
        self._checkpoint = checkpoint or (lambda: None)
        self.relay_port = relay_port or free_port()
        self.relay_url = f"https://127.0.0.1:{self.relay_port}"
        self.client_config_path = client_config_path or default_config_path()
        self._say = say or (lambda msg: None)
        self.kube_version = kube_version
        self.relay_env = relay_env or {}
        self.agent_forward_to = agent_forward_to
        self.children: dict[str, Child] = {}
        self.identity = load_demo_identity()
        self.api: dict[str, Any] = {}
        self.idp: dict[str, Any] = {}
        self._config_backup: bytes | None = None
        self._wrote_config = False
        self._written_config = b""
        self.agent_token = ""

    # -- processes ---------------------------------------------------------------
    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _start_ready(self, name: str, module: str, *args: str) -> dict[str, Any]:
        sub = self.dir / name
        sub.mkdir(mode=0o700, exist_ok=True)
        ready = sub / "ready.json"
        ready.unlink(missing_ok=True)
        child = Child(name, self._python(module, "--port", "0", "--state-dir", str(sub),
                                         "--ready-file", str(ready), *args), self.logs)
        self.children[name] = child
        child.start()
        return child.wait_ready_file(ready, READY_TIMEOUT, checkpoint=self._checkpoint)

    def _alive_check(self, child: Child | None) -> Callable[[], None]:
        """What a wait calls each round: stop requested? child died?"""
        def check() -> None:
            self._checkpoint()
            if child is not None:
                child.check_alive()
        return check

    def start_relay(self) -> None:
        """Start ``arc-relay`` with the config written by :meth:`start` and wait for /readyz."""
        child = Child("relay", self._python("relay.cli", "--config", str(self.dir / "relay" / "config.yaml")),
                      self.logs, env=self.relay_env)
        self.children["relay"] = child
        child.start()
        ctx = ssl.create_default_context(cafile=str(self.dir / "relay" / "ca.crt"))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(self.relay_url + "/readyz", context=ctx, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False
        wait_until(ready, READY_TIMEOUT, "the relay to be ready", alive=self._alive_check(child))

    def stop_relay(self) -> None:
        """Stop the relay (tests restart it with :meth:`start_relay`)."""
        child = self.children.pop("relay", None)
        if child is not None:
            child.stop()

    def _oidc(self, secret_dir: Path) -> dict[str, Any]:
        """The ``oidc`` section of relay and agent: the sandbox issuer, its tenant
        only, and its member-groups endpoint as the overage group source."""
        secret = write_secret_file(secret_dir / "group-source.secret", self.identity.group_reader_secret)
        host = str(self.idp["url"]).split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
        return {
            "issuers": [{"issuer": self.idp["issuer"], "audiences": [AUDIENCE],
                         "ca_file": self.idp["ca_file"], "tenant_ids": [self.identity.tenant_id]}],
            "group_source": {"token_endpoint": self.idp["token_endpoint"],
                             "client_id": self.identity.group_reader_client_id,
                             "client_secret_file": str(secret),
                             "scope": "https://graph.microsoft.com/.default",
                             # The oid comes from the validated token, never from a URL in it.
                             "endpoint_template": f"{self.idp['url']}/v1.0/users/{{oid}}/getMemberObjects",
                             "allowed_hosts": [host], "ca_file": self.idp["ca_file"]},
        }

    def _write_relay_config(self) -> None:
        d = self.dir / "relay"
        d.mkdir(mode=0o700, exist_ok=True)
        ca = CertificateAuthority.create("cluster-connect demo relay CA")
        (d / "ca.crt").write_bytes(ca.certificate_pem)
        write_pem_pair(d, "tls", ca.issue_server(["localhost"], ["127.0.0.1", "::1"]))
        config = {
            "listen": f"127.0.0.1:{self.relay_port}",
            "public_url": self.relay_url,
            "state_dir": str(d),
            "tls": {"cert_file": str(d / "tls.crt"), "key_file": str(d / "tls.key")},
            "database": str(d / "relay.db"),
            "oidc": self._oidc(d),
            "admins": [self.identity.admin_oid],
            "limits": {"agent_grace_seconds": 5},
        }
        (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _auth(self, user: str, password: str) -> AuthConfig:
        return AuthConfig(token_endpoint=self.idp["token_endpoint"], ca_file=self.idp["ca_file"],
                          client_id=self.identity.client_id, scope=f"{AUDIENCE}/.default",
                          username=user, password=password)

    def client_config(self) -> ClientConfig:
        """The demo user's client config (what ``arc-proxy -n demo`` reads)."""
        return ClientConfig(relay_url=self.relay_url, relay_ca_file=str(self.dir / "relay" / "ca.crt"),
                            resource_group=RESOURCE_GROUP,
                            auth=self._auth(self.identity.user, self.identity.password))

    def admin_config(self) -> ClientConfig:
        """A client config for the bootstrap admin (registration, role assignments)."""
        cfg = self.client_config()
        cfg.auth = self._auth(self.identity.admin, self.identity.admin_password)
        return cfg

    async def _register(self, cluster_ca: CertificateAuthority, tls_server_name: str,
                        agent_cert_pem: bytes) -> None:
        cfg = self.admin_config()
        async with RelayApi(cfg, TokenSource(cfg.auth)) as api:
            await api.put_cluster(RESOURCE_GROUP, CLUSTER, {
                "location": "local",
                "agentPublicKeyCertificate": agent_cert_pem.decode(),
                "servingCaCertificate": cluster_ca.certificate_pem.decode(),
                "tlsServerName": tls_server_name,
            })
            await api.put_role_assignment("demo-user-cluster-user", {
                "principalId": self.identity.user_oid, "principalType": "User",
                "role": "cluster-user", "scope": f"/resourceGroups/{RESOURCE_GROUP}/clusters/{CLUSTER}",
            })

    async def cluster_status(self) -> str:
        cfg = self.admin_config()
        async with RelayApi(cfg, TokenSource(cfg.auth)) as api:
            reg = await api.get_cluster(RESOURCE_GROUP, CLUSTER)
        return str(reg.get("connectivityStatus", ""))

    def _write_agent(self, cluster_ca: CertificateAuthority, tls_server_name: str,
                     agent_key_pem: bytes) -> Path:
        d = self.dir / "agent"
        d.mkdir(mode=0o700, exist_ok=True)
        key = write_secret_file(d / "agent.key", agent_key_pem)
        write_pem_pair(d, "serving", cluster_ca.issue_server([tls_server_name], ["127.0.0.1"]))
        token = write_secret_file(d / "upstream.token", self.agent_token)
        config: dict[str, Any] = {
            "relay": {"url": self.relay_url, "ca_file": str(self.dir / "relay" / "ca.crt")},
            "cluster": {"resource_group": RESOURCE_GROUP, "name": CLUSTER},
            "agent_key_file": str(key),
            "kube_aad_proxy": {} if self.agent_forward_to else {
                "listen": "127.0.0.1:0",
                "serving_cert_file": str(d / "serving.crt"),
                "serving_key_file": str(d / "serving.key"),
                "upstream_url": self.api["url"],
                "upstream_ca_file": self.api["ca_file"],
                "upstream_token_file": str(token),
                "oidc": self._oidc(d),
            },
        }
        if self.agent_forward_to:
            config["forward_to"] = self.agent_forward_to
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_agent(self) -> None:
        """Start ``arc-agent`` (restartable by tests)."""
        child = Child("agent", self._python("agent.cli", "--config", str(self.dir / "agent" / "config.yaml")),
                      self.logs)
        self.children["agent"] = child
        child.start()

    def stop_agent(self) -> None:
        child = self.children.pop("agent", None)
        if child is not None:
            child.stop()

    def wait_connected(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the relay reports the cluster Connected."""
        agent = self.children.get("agent")
        wait_until(lambda: asyncio.run(self.cluster_status()) == "Connected", timeout,
                   "the agent to connect to the relay", interval=0.2, alive=self._alive_check(agent))

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Bring everything up, printing one line per step. With ``agent_forward_to``
        there is no API server: the agent pipes streams to that address."""
        with_api = self.agent_forward_to is None
        if with_api:
            self.api = self._start_ready("apiserver", "sandbox.apiserver", "--version",
                                         self.kube_version)
            self._say(f"[1/7] sandbox API server     {self.api['url']}")
        self.idp = self._start_ready("idp", "sandbox.idp")
        self._say(f"[2/7] sandbox OIDC issuer    {self.idp['issuer']}")
        self._checkpoint()
        self._write_relay_config()
        self.start_relay()
        self._say(f"[3/7] relay                  {self.relay_url}")
        tls_server_name = f"{CLUSTER}.{RESOURCE_GROUP}.kube-aad-proxy.cluster-connect.local"
        cluster_ca = CertificateAuthority.create(f"{RESOURCE_GROUP}/{CLUSTER} serving CA")
        agent_keys = generate_key_pair(f"{RESOURCE_GROUP}/{CLUSTER}")
        self._checkpoint()
        asyncio.run(self._register(cluster_ca, tls_server_name, agent_keys.certificate_pem))
        self._say(f"[4/7] cluster registered     {RESOURCE_GROUP}/{CLUSTER}; "
                  f"{self.identity.user} has cluster-user")
        self._checkpoint()
        if with_api:
            self.agent_token = seed_demo(self.sandbox_admin(), demo_user_oid=self.identity.user_oid)
            self._say("[5/7] sandbox seeded         RBAC for the demo user, agent ServiceAccount, "
                      "demo pods")
        self._checkpoint()
        self._write_agent(cluster_ca, tls_server_name, agent_keys.private_key_pem)
        self.start_agent()
        self.wait_connected()
        self._say("[6/7] agent connected        arc-agent + kube-aad-proxy")
        self._checkpoint()
        self._write_client_config()
        self._say(f"[7/7] client config          {self.client_config_path}")
        # Holds the sandbox API server's admin token.
        write_secret_file(self.dir / "demo.json", json.dumps(self.info(), indent=2))

    def _write_client_config(self) -> None:
        p = self.client_config_path
        if p.exists() and not self._wrote_config:
            self._config_backup = p.read_bytes()
        write_config(self.client_config(), p)
        self._written_config = p.read_bytes()
        self._wrote_config = True

    def info(self) -> dict[str, Any]:
        """What tests need: URLs, files, pids."""
        return {
            "state_dir": str(self.dir), "relay_url": self.relay_url,
            "client_config": str(self.client_config_path),
            "apiserver": self.api, "idp": self.idp,
            "pids": {n: c.pid for n, c in self.children.items() if c.proc is not None},
        }

    def sandbox_admin(self) -> SandboxAdmin:
        """An admin client for the sandbox API server (tests create fixtures with it)."""
        return SandboxAdmin(self.api["url"], Path(self.api["ca_file"]).read_bytes(),
                            str(self.api["admin_token"]))

    def check_children(self) -> None:
        """Raise if a child died."""
        for child in list(self.children.values()):
            child.check_alive()

    def stop(self) -> list[str]:
        """Stop every child (agent first, API server last) and remove what we
        created. Never raises.

        Returns:
            ``"name (pid N)"`` of each child still there after SIGKILL (normally none).
        """
        order = ["agent", "relay", "idp", "apiserver"]
        names = sorted(self.children, key=lambda n: order.index(n) if n in order else len(order))
        stuck = [f"{name} (pid {self.children[name].pid})" for name in names if not self.children[name].stop()]
        self.children.clear()
        if self._wrote_config:
            try:
                current = self.client_config_path.read_bytes()
            except OSError:
                current = None
            # Only undo our own write: another demo may have replaced the file since.
            if current == self._written_config:
                try:
                    if self._config_backup is not None:
                        write_secret_file(self.client_config_path, self._config_backup)
                    else:
                        self.client_config_path.unlink(missing_ok=True)
                except OSError:
                    pass  # the directory went away: nothing of ours is left in it
            self._wrote_config = False
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return stuck


def _runnable(script: str) -> str:
    """How the user can run one of our console scripts from another shell:
    the bare name when PATH finds this installation's copy (venv activated),
    else its path — `./run demo` does not activate the venv. A non-default
    $ARC_CONFIG is carried along, since the other shell will not have it."""
    ours = Path(sys.executable).parent / script
    found = shutil.which(script)
    command = script if found and Path(found).resolve() == ours.resolve() else str(ours)
    if ours.exists() and command != script:
        try:
            command = str(ours.relative_to(Path.cwd()))
        except ValueError:
            pass
    config = os.environ.get("ARC_CONFIG")
    return f"ARC_CONFIG={shlex.quote(config)} {command}" if config else command


class DemoInterrupted(Exception):
    """SIGINT/SIGTERM arrived; raised only at a checkpoint of the demo."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Records SIGINT/SIGTERM instead of raising where the main thread happens
    to be. A ``KeyboardInterrupt`` thrown into ``subprocess``, ``print`` or the
    event loop can leave a lock held or a child unrecorded, and the demo then
    failed its own clean-up; here the signal only sets a flag and
    :meth:`check` raises :class:`DemoInterrupted` at points that are safe.
    A second signal during the stop is recorded and otherwise ignored: the stop
    is bounded (``client.procs.STOP_TIMEOUT``) and leaves nothing behind."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._record)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _record(self, signum: int, _frame: Any) -> None:
        if not self.signum:
            self.signum = signum

    def check(self) -> None:
        """Raise :class:`DemoInterrupted` once a stop signal has arrived."""
        if self.signum:
            raise DemoInterrupted(self.signum)


# How often the foreground loop looks for a stop signal and dead children.
POLL_INTERVAL = 0.2


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo in the foreground until Ctrl-C/SIGTERM.

    Exit codes: 0 when stopped by SIGINT/SIGTERM at any point (start-up
    included) and everything was removed; a ``CliError`` code (one line) when a
    step failed or a child died; 1 when a child could not be stopped.
    """
    def say(msg: str) -> None:
        print(msg, flush=True)

    stops = StopSignals()
    stops.install()
    env: DemoEnvironment | None = None
    code = 0
    try:
        try:
            env = DemoEnvironment(args.state_dir, relay_port=args.relay_port, say=say,
                                  kube_version=args.kube_version, checkpoint=stops.check)
        except OSError as err:
            raise CliError(f"cannot create the demo's files in {err.filename or args.state_dir}: "
                           f"{err.strerror}; pass a writable --state-dir") from None
        say(f"Starting the cluster-connect demo (files in {env.dir})")
        env.start()
        say("")
        say("Ready. In another shell run:")
        say(f"  {_runnable('arc-proxy')} -n demo")
        kubectl_note = "" if shutil.which("kubectl") else "   (kubectl is not on PATH: install it first)"
        say(f"  kubectl get pods -A{kubectl_note}")
        say("Ctrl-C here stops the demo and removes what it created.")
        while True:
            stops.check()
            env.check_children()
            time.sleep(POLL_INTERVAL)
    except DemoInterrupted:
        say("Stopping the demo...")
    finally:
        stuck = env.stop() if env is not None else []
        stops.restore()
        if stuck:
            print(f"arcctl demo: {', '.join(stuck)} did not exit after SIGKILL; check it with ps",
                  file=sys.stderr)
            code = 1
        if env is not None:
            say("Demo stopped.")
    return code
