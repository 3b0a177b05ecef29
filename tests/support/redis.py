"""A real ``redis-server`` for tests, on a unix socket in a temp dir.

No TCP port is picked: the server listens only on ``<dir>/redis.sock``
(``--port 0``), keeps nothing on disk (``--save '' --appendonly no``), and is
ready when it logs that it accepts connections, then answers PING.
``restart(kill=True)`` is ``kill -9`` plus a new server on the same socket,
empty, as after a crash. Tests skip with a reason when the binary is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.processes import ChildProcess

REDIS_SERVER = shutil.which("redis-server")
# redis-server logs this once it serves, in either case ("The server is now
# ready to accept connections at PATH" in 7.0, "Ready to accept connections unix" later).
READY_TEXT = "ready to accept connections"


def require_redis_server() -> str:
    """The redis-server binary, or skip the test naming the package to install."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    return REDIS_SERVER


class RedisServer:
    """One redis-server process; ``url`` is what redis-py and the relay connect to."""

    def __init__(self, base: Path) -> None:
        self.dir = base
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        """Start it and wait for its ready line (bounded)."""
        binary = require_redis_server()
        self.child = ChildProcess.start(
            [binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--loglevel", "notice"],
            ready=lambda line: READY_TEXT in line.lower(), name="redis-server")

    def kill(self) -> None:
        """``kill -9``: everything it held is gone."""
        if self.child is not None:
            self.child.kill()

    def restart(self) -> None:
        """``kill -9`` and start an empty one on the same socket."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def client(self) -> aioredis.Redis:
        """A redis-py client of this server (text replies)."""
        return aioredis.from_url(self.url, decode_responses=True)


async def running_redis(base: Path) -> AsyncIterator[RedisServer]:
    """A started server that answered PING, stopped afterwards (fixture body)."""
    server = RedisServer(base)
    server.start()
    try:
        client = server.client()
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        yield server
    finally:
        server.stop()
