"""What a relay tier stands on, for ``arcctl demo --replicas N`` (and the
tests, which share the PostgreSQL part): a real ``redis-server`` and a real
PostgreSQL (``initdb`` + ``postgres`` from Debian's
``/usr/lib/postgresql/<newest>/bin``), each a child process on loopback.

PostgreSQL refuses to run as root: as root its data directory is a temp dir
of its own owned by ``nobody`` (the demo's dir is 0700 and root's), and it runs
as ``nobody`` through ``setpriv``. :meth:`PostgresDir.remove` deletes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from cmdline.errors import CliError
from demo.haproxy import haproxy_binary
from demo.processes import Child

__all__ = ["PostgresDir", "as_postgres_user", "missing_packages", "postgres_bin", "redis_child",
           "redis_ready"]

# The database user the relays connect as (trust authentication on loopback).
POSTGRES_USER = "relay"


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb and postgres."""
    found = []
    for bin_dir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bin_dir / "initdb").exists() and (bin_dir / "postgres").exists():
            with contextlib.suppress(ValueError):
                found.append((int(bin_dir.parent.name), bin_dir))
    return max(found)[1] if found else None


def as_postgres_user(argv: list[str]) -> list[str]:
    """``argv`` as run by ``nobody`` when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv]


def missing_packages() -> list[str]:
    """The Debian packages a relay tier needs and this machine lacks."""
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if postgres_bin() is None:
        missing.append("postgresql")
    if haproxy_binary() is None:
        missing.append("haproxy")
    return missing


def redis_child(directory: Path, log_dir: Path) -> Child:
    """A (not started) redis-server listening only on ``directory/redis.sock``,
    keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise CliError("redis-server is not installed: apt-get install redis-server")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Child("redis", [binary, "--port", "0", "--unixsocket", str(directory / "redis.sock"),
                           "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                           "--dir", str(directory)], log_dir)


def redis_ready(sock: Path) -> bool:
    """Whether the redis-server on ``sock`` answers PING."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class PostgresDir:
    """A PostgreSQL data directory in a temp dir of its own (see the module docstring).

    Call :meth:`init` once, then start :meth:`child` and wait for :meth:`ready`;
    :meth:`remove` when done.
    """

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise CliError("PostgreSQL is not installed: apt-get install postgresql")
        self.bin = bin_dir
        if os.geteuid() == 0:
            # nobody must reach it: not under a private (0700) TMPDIR or state dir.
            self.dir = Path(tempfile.mkdtemp(prefix="arc-demo-pg-", dir="/tmp"))
            shutil.chown(self.dir, "nobody", "nogroup")
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="arc-demo-pg-"))
        self.data = self.dir / "data"

    def init(self) -> None:
        """``initdb`` (trust on loopback, no fsync).

        Raises:
            CliError: initdb failed (its last output line).
        """
        done = subprocess.run(as_postgres_user([str(self.bin / "initdb"), "-D", str(self.data), "-U",
                                                POSTGRES_USER, "--auth=trust", "-E", "UTF8", "--no-sync"]),
                              capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-1:]
            raise CliError(f"initdb failed: {' '.join(tail) or done.returncode}")

    def child(self, port: int, log_dir: Path) -> Child:
        """A (not started) ``postgres`` on 127.0.0.1:``port``, fsync off."""
        return Child("postgres", as_postgres_user([
            str(self.bin / "postgres"), "-D", str(self.data), "-F", "-h", "127.0.0.1", "-p", str(port),
            "-k", str(self.dir), "-c", "max_connections=100"]), log_dir)

    def ready(self, port: int) -> bool:
        """Whether the server on ``port`` accepts connections (pg_isready)."""
        return subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port),
                               "-U", POSTGRES_USER], capture_output=True, timeout=10,
                              check=False).returncode == 0

    @staticmethod
    def url(port: int) -> str:
        """The relays' ``database.url``."""
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}/postgres"

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
