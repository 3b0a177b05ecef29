"""The demo's processes and files: :class:`DemoEnvironment`.

Starts, each as its own process: the sandbox API server, the sandbox OIDC
issuer, ``arc-relay`` and ``arc-agent`` (with kube-aad-proxy); registers
cluster ``default/demo``, gives the demo user ``cluster-user`` on it and writes
the client config so ``arc-proxy -n demo`` needs no flags. :meth:`restart`
starts a child that died again on the same port with the same files (the
supervisor of ``arcctl demo`` calls it); :meth:`stop` stops every child and
removes what the demo created.

:class:`DemoEnvironment` is also what the end-to-end tests and ``bench/e2e.py``
use.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from certs import CertificateAuthority, generate_key_pair, write_pem_pair, write_secret_file
from client.auth import TokenSource
from client.config import AuthConfig, ClientConfig, default_config_path, write_config
from client.relay_client import RelayApi
from cmdline.errors import CliError
from demo.identity import AUDIENCE, RELAY_AUDIENCE, load_demo_identity, oidc_section
from demo.processes import Child, free_port, wait_until
from demo.seed import SandboxAdmin, seed_demo
from demo.tier import RelayTier, check_tier_tools
from demo.web import DemoWebServer

__all__ = ["CHILD_NAMES", "DemoEnvironment"]

RESOURCE_GROUP = "default"
CLUSTER = "demo"
READY_TIMEOUT = 30.0
# Every child the demo may start, in start order (stop goes the other way);
# with --replicas N the relay is a tier: redis, postgres, relay-1..N, haproxy.
CHILD_NAMES = ("apiserver", "idp", "relay", "agent")


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

    Nothing is removed before :meth:`stop`: a child that dies leaves its log,
    its state and the client config in place for a restart (or a look).
    """

    def __init__(self, state_dir: Path | None = None, *, relay_port: int = 0,
                 client_config_path: Path | None = None, say: Any = None,
                 kube_version: str = "1.33.0", relay_env: dict[str, str] | None = None,
                 agent_forward_to: str | None = None,
                 checkpoint: Callable[[], None] | None = None,
                 relay_database: dict[str, str] | None = None, require_pop: bool = True,
                 replicas: int = 1, relay_audience: bool = True) -> None:
        check_tier_tools(replicas)  # before anything is created: one line, nothing to clean
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
        # The relay config's `database` section (tests: PostgreSQL); None: the SQLite file.
        self.relay_database = relay_database
        # kube-aad-proxy refuses bare bearer tokens: kubectl's are bound to the
        # cluster (docs/pop.md). Off only for suites that send forged bare tokens.
        self.require_pop = require_pop
        # The relay accepts only its own audience (RELAY_AUDIENCE), which no cluster
        # sees; off (one audience for both, as older configs) only for suites that
        # send one forged token to both.
        self.relay_audience = RELAY_AUDIENCE if relay_audience else AUDIENCE
        self.children: dict[str, Child] = {}
        # --replicas N > 1: the relay tier behind HAProxy (on relay_port).
        self.tier = RelayTier(self.dir / "relay", self.logs, replicas, self.relay_port, self.children,
                              self._alive_check) if replicas > 1 else None
        self.identity = load_demo_identity()
        self.api: dict[str, Any] = {}
        self.idp: dict[str, Any] = {}
        self._config_backup: bytes | None = None
        self._wrote_config = False
        self._written_config = b""
        self.agent_token = ""
        # What the demo pods' port 8080 forwards to (started with the API server).
        self.web: DemoWebServer | None = None

    # -- processes ---------------------------------------------------------------
    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _start_ready(self, name: str, module: str, port: int, *args: str) -> dict[str, Any]:
        """Start a sandbox server that writes a ready file and wait for it."""
        sub = self.dir / name
        sub.mkdir(mode=0o700, exist_ok=True)
        ready = sub / "ready.json"
        ready.unlink(missing_ok=True)
        child = Child(name, self._python(module, "--port", str(port), "--state-dir", str(sub),
                                         "--ready-file", str(ready), *args), self.logs)
        self.children[name] = child
        child.start()
        return child.wait_ready_file(ready, READY_TIMEOUT, checkpoint=self._checkpoint)

    def start_apiserver(self, port: int = 0) -> dict[str, Any]:
        """Start the sandbox API server and wait until it serves.

        Args:
            port: 0 = any free port; a restart passes the port it had, since the
                agent's config names it.

        Returns:
            Its ready data (``url``, ``ca_file``, ``admin_token``, ...), also kept in ``api``.
        """
        self.api = self._start_ready("apiserver", "sandbox.apiserver", port,
                                     "--version", self.kube_version)
        return self.api

    def start_idp(self, port: int = 0) -> dict[str, Any]:
        """Start the sandbox OIDC issuer and wait until it serves.

        Args:
            port: 0 = any free port; a restart passes the port it had, since the
                issuer URL in the relay's and the agent's config contains it
                (its CA and signing keys persist in its state dir).

        Returns:
            Its ready data (``issuer``, ``token_endpoint``, ``ca_file``, ...), also kept in ``idp``.
        """
        self.idp = self._start_ready("idp", "sandbox.idp", port)
        return self.idp

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

    def _oidc(self, secret_dir: Path, audience: str = AUDIENCE) -> dict[str, Any]:
        """The ``oidc`` section of relay and agent, its group reader's secret in ``secret_dir``."""
        secret = write_secret_file(secret_dir / "group-source.secret", self.identity.group_reader_secret)
        return oidc_section(self.identity, self.idp, secret, audience)

    def write_relay_config(self) -> Path:
        """Write the relay's CA, TLS pair and config (needs the issuer started).

        Returns:
            The config file's path.
        """
        d = self.dir / "relay"
        d.mkdir(mode=0o700, exist_ok=True)
        ca = CertificateAuthority.create("cluster-connect demo relay CA")
        (d / "ca.crt").write_bytes(ca.certificate_pem)
        write_pem_pair(d, "tls", ca.issue_server(["localhost"], ["127.0.0.1", "::1"]))
        return self._relay_config("config", self.relay_port, {})

    def _relay_config(self, name: str, port: int, sections: dict[str, Any]) -> Path:
        """Write relay config ``NAME.yaml`` serving ``port`` (``sections``
        override the single relay's: a replica's database, presence, peering, health)."""
        d = self.dir / "relay"
        config = {
            "listen": f"127.0.0.1:{port}",
            "public_url": self.relay_url,
            "state_dir": str(d if name == "config" else d / name),
            "tls": {"cert_file": str(d / "tls.crt"), "key_file": str(d / "tls.key")},
            "database": self.relay_database or str(d / "relay.db"),
            "oidc": self._oidc(d, self.relay_audience),
            "admins": [self.identity.admin_oid],
            "limits": {"agent_grace_seconds": 5},
            **sections,
        }
        path = d / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_tier(self) -> None:
        """Start the relay tier (``--replicas``): Redis, PostgreSQL, the relays, HAProxy."""
        assert self.tier is not None
        self.tier.start(self._relay_config, lambda path: self._python("relay.cli", "--config", str(path)),
                        self.relay_env)

    def auth_config(self, user: str, password: str) -> AuthConfig:
        """How ``user`` signs in at the sandbox issuer (password grant, demo audience)."""
        return AuthConfig(token_endpoint=self.idp["token_endpoint"], ca_file=self.idp["ca_file"],
                          client_id=self.identity.client_id, scope=f"{AUDIENCE}/.default",
                          relay_scope=f"{self.relay_audience}/.default" if self.relay_audience != AUDIENCE else None,
                          username=user, password=password,
                          # arc-proxy's kubeconfig asks for tokens bound to the cluster (docs/pop.md).
                          pop=self.require_pop)

    def client_config(self) -> ClientConfig:
        """The demo user's client config (what ``arc-proxy -n demo`` reads)."""
        return ClientConfig(relay_url=self.relay_url, relay_ca_file=str(self.dir / "relay" / "ca.crt"),
                            resource_group=RESOURCE_GROUP,
                            auth=self.auth_config(self.identity.user, self.identity.password))

    def admin_config(self) -> ClientConfig:
        """A client config for the bootstrap admin (registration, role assignments)."""
        cfg = self.client_config()
        cfg.auth = self.auth_config(self.identity.admin, self.identity.admin_password)
        return cfg

    async def _register(self, cluster_ca: CertificateAuthority, tls_server_name: str,
                        agent_cert_pem: bytes) -> None:
        cfg = self.admin_config()
        async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
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

    def _pin_cluster_ca(self, cluster_ca: CertificateAuthority, tls_server_name: str) -> None:
        """Pin the demo cluster's new serving CA for the client config, as an
        admin hands the fingerprint out: a demo restarted on the same relay
        port makes a new CA, which arc-proxy would otherwise refuse as changed."""
        from certs import fingerprint_sha256
        from client.known_clusters import KnownClusters, Pin

        KnownClusters.beside(self.client_config_path).put(Pin(
            self.relay_url, f"{RESOURCE_GROUP}/{CLUSTER}", fingerprint_sha256(cluster_ca.certificate_pem),
            tls_server_name))

    async def cluster_status(self) -> str:
        """The demo cluster's ``connectivityStatus`` at the relay (asked as the admin)."""
        cfg = self.admin_config()
        async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
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
                # Only proof-of-possession tokens naming this cluster (docs/pop.md).
                "pop": {"required": self.require_pop},
            },
        }
        if self.agent_forward_to:
            config["forward_to"] = self.agent_forward_to
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_agent(self) -> None:
        """Start ``arc-agent``; it dials the relay on its own (see :meth:`wait_connected`)."""
        child = Child("agent", self._python("agent.cli", "--config", str(self.dir / "agent" / "config.yaml")),
                      self.logs)
        self.children["agent"] = child
        child.start()

    def stop_agent(self) -> None:
        """Stop the agent (tests restart it with :meth:`start_agent`)."""
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
            self.start_apiserver()
            self._say(f"[1/7] sandbox API server     {self.api['url']}")
        self.start_idp()
        self._say(f"[2/7] sandbox OIDC issuer    {self.idp['issuer']}")
        self._checkpoint()
        self.write_relay_config()
        if self.tier is not None:
            self.start_tier()
            self._say(f"[3/7] relay tier             {self.relay_url} (HAProxy) -> "
                      f"{len(self.tier.replicas)} relays on PostgreSQL and Redis")
        else:
            self.start_relay()
            self._say(f"[3/7] relay                  {self.relay_url}")
        tls_server_name = f"{CLUSTER}.{RESOURCE_GROUP}.kube-aad-proxy.cluster-connect.local"
        cluster_ca = CertificateAuthority.create(f"{RESOURCE_GROUP}/{CLUSTER} serving CA")
        agent_keys = generate_key_pair(f"{RESOURCE_GROUP}/{CLUSTER}")
        self._checkpoint()
        asyncio.run(self._register(cluster_ca, tls_server_name, agent_keys.certificate_pem))
        self._pin_cluster_ca(cluster_ca, tls_server_name)
        self._say(f"[4/7] cluster registered     {RESOURCE_GROUP}/{CLUSTER}; "
                  f"{self.identity.user} has cluster-user")
        self._checkpoint()
        if with_api:
            self.web = DemoWebServer().start()
            self._seed()
            self._say("[5/7] sandbox seeded         RBAC for the demo user, agent ServiceAccount, "
                      "demo pods (port 8080 answers port-forward)")
        self._checkpoint()
        self._write_agent(cluster_ca, tls_server_name, agent_keys.private_key_pem)
        self.start_agent()
        self.wait_connected()
        self._say("[6/7] agent connected        arc-agent + kube-aad-proxy")
        self._checkpoint()
        self._write_client_config()
        self._say(f"[7/7] client config          {self.client_config_path}")
        self.write_info()

    def restart(self, name: str) -> str:
        """Start child ``name`` again after it ended: same port, files and log
        (appended to), and wait until it serves. Nothing else is touched, except
        that a new sandbox API server is a new, empty cluster: it is seeded again
        and the agent restarted with the new ServiceAccount token.

        Args:
            name: one of :data:`CHILD_NAMES` that this environment started.

        Returns:
            What else the restart did, as a clause to append to the report ("" if nothing).

        Raises:
            CliError: the child did not come up (it is stopped again; call again later).
        """
        try:
            note = self._restart(name)
        except CliError:
            child = self.children.get(name)
            if child is not None:
                child.stop()
            raise
        self.write_info()
        return note

    def _restart(self, name: str) -> str:
        tier = self.tier is not None and name in self.tier.names
        if name not in CHILD_NAMES and not tier:
            raise ValueError(f"not a child of the demo: {name!r}")
        old = self.children.pop(name, None)
        if old is not None:
            old.stop()  # it ended already, or the apiserver's restart replaced it
        if tier:
            assert self.tier is not None
            self.tier.restart(name)
            return ""
        if name == "apiserver":
            self.start_apiserver(port=int(self.api["port"]))
            self._seed()
            write_secret_file(self.dir / "agent" / "upstream.token", self.agent_token)
            self.stop_agent()
            self.start_agent()
            return ("; it is a new, empty cluster: the demo objects were created again and the "
                    "agent restarted with its new token")
        if name == "idp":
            self.start_idp(port=int(self.idp["port"]))
        elif name == "relay":
            self.start_relay()
        else:
            self.start_agent()
        return ""

    def _seed(self) -> None:
        self.agent_token = seed_demo(self.sandbox_admin(), demo_user_oid=self.identity.user_oid,
                                     web_address=self.web.address if self.web else None)

    def write_info(self) -> None:
        """(Re)write ``demo.json`` in the state dir: :meth:`info` as JSON, mode
        0600 (it holds the sandbox API server's admin token)."""
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
            "web": self.web.address if self.web else None,
            "pids": {n: c.pid for n, c in self.children.items() if c.proc is not None},
            "tier": self.tier.info() if self.tier is not None else None,
        }

    def sandbox_admin(self) -> SandboxAdmin:
        """An admin client for the sandbox API server (tests create fixtures with it)."""
        return SandboxAdmin(self.api["url"], Path(self.api["ca_file"]).read_bytes(),
                            str(self.api["admin_token"]))

    def stop(self) -> list[str]:
        """Stop every child (agent first, API server last) and remove what we
        created. Never raises.

        Returns:
            ``"name (pid N)"`` of each child still there after SIGKILL (normally none).
        """
        order = ["agent", "haproxy", "relay", "postgres", "redis", "idp", "apiserver"]

        def rank(name: str) -> int:
            return order.index("relay") if name.startswith("relay-") else \
                order.index(name) if name in order else len(order)
        names = sorted(self.children, key=rank)
        stuck = [f"{name} (pid {self.children[name].pid})" for name in names if not self.children[name].stop()]
        self.children.clear()
        if self.tier is not None:
            self.tier.remove()
        if self.web is not None:
            self.web.stop()
            self.web = None
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
