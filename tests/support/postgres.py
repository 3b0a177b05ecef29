"""A real PostgreSQL server for the test session: ``initdb`` + ``postgres``
from Debian's ``/usr/lib/postgresql/<newest>/bin`` into a temporary
directory (the binaries are found and run as ``nobody`` by demo/backing.py,
which ``arcctl demo --replicas`` uses too), listening on 127.0.0.1 (and a unix socket in that directory),
fsync off. As root it runs as ``nobody`` (PostgreSQL refuses root).

tests/conftest.py's ``postgres_server`` (session fixture) is the server;
``postgres_dsn`` gives each test a fresh, empty database on it. Tests skip, with the reason, when
the binaries are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.backing import as_postgres_user, postgres_bin
from tests.support.waits import WAIT, wait_until

USER = "relay"


@dataclass
class PostgresServer:
    """A running server: ``dsn(database)`` names a database on it."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throw-away server (skip when PostgreSQL is not installed)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                    "apt-get install postgresql)")
    tmp = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    if os.geteuid() == 0:
        shutil.chown(tmp, "nobody", "nogroup")
    data = tmp / "data"
    try:
        subprocess.run(as_postgres_user([str(bin_dir / "initdb"), "-D", str(data), "-U", USER,
                                          "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        ready = bin_dir / "pg_isready"
        for _attempt in range(5):  # a port picked then bound by someone else: pick again
            port = _free_port()
            log = (tmp / "postgres.log").open("wb")
            process = subprocess.Popen(as_postgres_user([
                str(bin_dir / "postgres"), "-D", str(data), "-F", "-h", "127.0.0.1",
                "-p", str(port), "-k", str(tmp), "-c", "max_connections=200"]),
                stdout=log, stderr=subprocess.STDOUT)
            log.close()

            def up(port: int = port, process: subprocess.Popen[bytes] = process) -> bool:
                if process.poll() is not None:
                    return True
                return subprocess.run([str(ready), "-h", "127.0.0.1", "-p", str(port), "-U", USER],
                                      capture_output=True, timeout=10).returncode == 0

            wait_until(up, "postgres to accept connections", WAIT)
            if process.poll() is None:
                break
        else:
            raise RuntimeError("postgres did not start: " + (tmp / "postgres.log").read_text()[-2000:])
        server = PostgresServer("127.0.0.1", port, process, data)
        try:
            yield server
        finally:
            process.terminate()
            try:
                process.wait(WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def create_database(server: PostgresServer) -> str:
    """A fresh, empty database on ``server``; returns its DSN."""
    bin_dir = postgres_bin()
    assert bin_dir is not None
    name = "t_" + uuid.uuid4().hex[:12]
    subprocess.run([str(bin_dir / "createdb"), "-h", server.host, "-p", str(server.port), "-U", USER, name],
                   check=True, capture_output=True, timeout=60)
    return server.dsn(name)
