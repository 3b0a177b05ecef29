"""``arcctl demo --replicas N``: a relay tier on loopback.

A real redis-server (presence), a real PostgreSQL (clusters, role
assignments), N ``arc-relay`` processes (``relay-1`` … ``relay-N``), each with
its own port, health listener and peer listener, and HAProxy in front of them
on the demo's relay address, health-checking each relay's ``/readyz``. Agent
and client configs name HAProxy's address, so ``arc-proxy -n demo`` and
kubectl work as with one relay; ``kill -9`` of the relay holding the agent is
survived (the agent redials through HAProxy, the other relays forward to it).
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs import CertificateAuthority, write_pem_pair
from cmdline.errors import CliError
from demo.backing import PostgresDir, missing_packages, redis_child, redis_ready
from demo.haproxy import Backend, haproxy_binary, haproxy_child, haproxy_config, wait_haproxy
from demo.processes import Child, free_port, wait_until

__all__ = ["RelayTier", "check_tier_tools"]

READY_TIMEOUT = 30.0
# Short, so that the demo shows a killed relay's routes go quickly.
PRESENCE_TTL_SECONDS = 5.0


def check_tier_tools(replicas: int) -> None:
    """Refuse ``--replicas`` up front when a tool is missing.

    Raises:
        CliError: one line naming the Debian packages to install.
    """
    if replicas < 1:
        raise CliError(f"--replicas must be 1 or more, not {replicas}")
    if replicas == 1:
        return
    missing = missing_packages()
    if missing:
        raise CliError(f"--replicas needs {', '.join(missing)}, not installed here: "
                       f"apt-get install {' '.join(missing)}")


@dataclass
class Replica:
    """One relay of the tier: its name (child and replica id) and ports."""

    name: str
    port: int
    health_port: int
    peer_port: int


class RelayTier:
    """The backing services, relays and load balancer of the demo's tier.

    Args:
        directory: the demo's ``relay`` dir (CA, TLS pair, configs go here).
        log_dir: where each child's log goes.
        replicas: how many relays.
        lb_port: HAProxy's port (the demo's relay URL).
        children: the demo's children (this adds redis, postgres, relay-N, haproxy).
        check: called in every wait (stop requested? child died?).
    """

    def __init__(self, directory: Path, log_dir: Path, replicas: int, lb_port: int,
                 children: dict[str, Child], check: Callable[[Child | None], Callable[[], None]]) -> None:
        self.dir = directory
        self.logs = log_dir
        self.lb_port = lb_port
        self.children = children
        self._check = check
        self.replicas = [Replica(f"relay-{i}", free_port(), free_port(), free_port())
                         for i in range(1, replicas + 1)]
        self.postgres: PostgresDir | None = None
        self.postgres_port = free_port()
        self.redis_dir = directory / "redis"

    @property
    def names(self) -> list[str]:
        """The children this tier starts, in start order."""
        return ["redis", "postgres", *(r.name for r in self.replicas), "haproxy"]

    def start(self, relay_config: Callable[[str, int, dict[str, Any]], Path],
              relay_argv: Callable[[Path], list[str]], relay_env: dict[str, str]) -> None:
        """Start redis, PostgreSQL, every relay (config from ``relay_config(name,
        port, extra_sections)``) and HAProxy; wait for each."""
        self._relay_argv = relay_argv
        self._relay_env = relay_env
        self.start_redis()
        self.postgres = PostgresDir()
        self.postgres.init()
        self.start_postgres()
        peers = self.dir / "peers"
        peers.mkdir(mode=0o700, exist_ok=True)
        authority = CertificateAuthority.create("cluster-connect demo peer CA")
        (peers / "peer-ca.crt").write_bytes(authority.certificate_pem)
        self._configs: dict[str, Path] = {}
        for replica in self.replicas:
            cert, key = write_pem_pair(peers, replica.name, authority.issue_peer(replica.name))
            self._configs[replica.name] = relay_config(replica.name, replica.port, {
                "database": {"url": PostgresDir.url(self.postgres_port)},
                "presence": {"redis_url": f"unix://{self.redis_dir / 'redis.sock'}",
                             "ttl_seconds": PRESENCE_TTL_SECONDS, "replica_id": replica.name},
                "peering": {"listen": f"127.0.0.1:{replica.peer_port}",
                            "ca_file": str(peers / "peer-ca.crt"), "cert_file": str(cert),
                            "key_file": str(key)},
                "health": {"listen": f"127.0.0.1:{replica.health_port}"},
            })
        for replica in self.replicas:  # all at once: migrations are safe concurrently
            self._spawn_relay(replica)
        for replica in self.replicas:
            self._wait_relay(replica)
        config = self.dir / "haproxy.cfg"
        config.write_text(haproxy_config(self.lb_port, [
            Backend(r.name, r.port, r.health_port) for r in self.replicas]))
        self.start_haproxy()

    def start_redis(self) -> None:
        child = self.children["redis"] = redis_child(self.redis_dir, self.logs).start()
        wait_until(lambda: redis_ready(self.redis_dir / "redis.sock"), READY_TIMEOUT,
                   "redis-server to answer", alive=self._check(child))

    def start_postgres(self) -> None:
        assert self.postgres is not None
        pg = self.postgres
        child = self.children["postgres"] = pg.child(self.postgres_port, self.logs).start()
        wait_until(lambda: pg.ready(self.postgres_port), READY_TIMEOUT,
                   "PostgreSQL to accept connections", alive=self._check(child))

    def _spawn_relay(self, replica: Replica) -> Child:
        child = Child(replica.name, self._relay_argv(self._configs[replica.name]), self.logs,
                      env=self._relay_env)
        self.children[replica.name] = child.start()
        return child

    def _wait_relay(self, replica: Replica) -> None:
        wait_until(lambda: self._relay_ready(replica), READY_TIMEOUT, f"{replica.name} to be ready",
                   alive=self._check(self.children[replica.name]))

    def _relay_ready(self, replica: Replica) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{replica.port}/readyz", context=ctx,
                                        timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def start_haproxy(self) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise CliError("haproxy is not installed: apt-get install haproxy")
        child = self.children["haproxy"] = haproxy_child(binary, self.dir / "haproxy.cfg", self.logs).start()
        self._check(child)()
        wait_haproxy(child, self.lb_port, READY_TIMEOUT)

    def restart(self, name: str) -> None:
        """Start child ``name`` of the tier again (same ports, files, data)."""
        if name == "redis":
            self.start_redis()
        elif name == "postgres":
            self.start_postgres()
        elif name == "haproxy":
            self.start_haproxy()
        else:
            replica = next(r for r in self.replicas if r.name == name)
            self._spawn_relay(replica)
            self._wait_relay(replica)

    def pid(self, name: str) -> int:
        """The process id of child ``name`` (a relay, ``redis``, ...)."""
        return self.children[name].pid

    def send_signal(self, name: str, signum: int) -> None:
        """Send ``signum`` to child ``name`` (``bench.ha``: a real kill -9 or
        SIGTERM); :meth:`exited` tells when it is gone."""
        os.kill(self.pid(name), signum)

    def exited(self, name: str) -> bool:
        """Whether child ``name`` has ended (and is reaped)."""
        return self.children[name].exit_code() is not None

    def spawn(self, name: str) -> None:
        """Start relay or ``redis`` child ``name`` again without waiting (same
        ports, files, data); poll :meth:`serving` from an event loop, which
        :meth:`restart` would block. Call it from the main thread (see
        ``demo.processes``: children die with the thread that started them)."""
        if name == "redis":
            self.children["redis"] = redis_child(self.redis_dir, self.logs).start()
        else:
            self._spawn_relay(next(r for r in self.replicas if r.name == name))

    def serving(self, name: str) -> bool:
        """One check, without waiting: does relay (``/readyz``) or ``redis``
        (PING) child ``name`` serve?"""
        if name == "redis":
            return redis_ready(self.redis_dir / "redis.sock")
        return self._relay_ready(next(r for r in self.replicas if r.name == name))

    def info(self) -> dict[str, Any]:
        """Ports of each relay, Redis's socket, PostgreSQL's port (tests read it)."""
        return {"replicas": {r.name: {"port": r.port, "health_port": r.health_port, "peer_port": r.peer_port}
                             for r in self.replicas},
                "redis_url": f"unix://{self.redis_dir / 'redis.sock'}",
                "postgres_port": self.postgres_port,
                "postgres_dir": str(self.postgres.dir) if self.postgres else None}

    def remove(self) -> None:
        """Delete PostgreSQL's temp dir (after its process stopped)."""
        if self.postgres is not None:
            self.postgres.remove()
