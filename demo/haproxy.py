"""HAProxy in front of relay replicas (``arcctl demo --replicas N``, and the
tests of a rolling restart).

TCP mode: TLS passes through to the relays (the relay's certificate and the
agents' audience are the load balancer's address, ``public_url``). Each relay
is health-checked with ``GET /readyz`` on its health listener (plain HTTP, a
port of its own): a stopping relay answers 503 at once, HAProxy takes it out
of rotation within one check interval, and a connection that still reaches
its closed listener is redispatched to another relay (``option redispatch``).
``timeout tunnel`` bounds an idle websocket; the tunnel's pings (every 30 s
from agents and arc-proxy) keep a live session well inside it.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from demo.processes import Child, wait_until

__all__ = ["Backend", "haproxy_binary", "haproxy_child", "haproxy_config", "listening", "wait_haproxy"]

# The Debian package that holds the binary (named in the one-line error).
PACKAGE = "haproxy"
# Health checks: every CHECK_INTERVAL_MS; one failure marks a relay down (a
# stopping relay's 503 is deliberate, not a flake), two successes bring it back.
CHECK_INTERVAL_MS = 250
# An idle websocket is cut after this; well above the tunnel's 30 s ping interval.
TUNNEL_TIMEOUT = "1h"


@dataclass(frozen=True)
class Backend:
    """One relay replica: its TLS port and its health listener's port."""

    name: str
    port: int
    health_port: int
    host: str = "127.0.0.1"


def haproxy_binary() -> str | None:
    """The haproxy executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def haproxy_config(port: int, backends: list[Backend], *, balance: str = "leastconn",
                   host: str = "127.0.0.1") -> str:
    """The haproxy.cfg text: listen on ``host:port``, spread over ``backends``.

    Args:
        balance: HAProxy's algorithm; ``first`` (fill the first healthy relay)
            lets a test know which relay a connection reaches.
    """
    servers = "\n".join(
        f"    server {b.name} {b.host}:{b.port} check port {b.health_port}" for b in backends)
    return f"""\
global
    maxconn 4000
    log stdout format raw local0 notice

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 75s
    timeout server 75s
    timeout tunnel {TUNNEL_TIMEOUT}
    timeout check 2s
    retries 3
    option redispatch 1
    default-server inter {CHECK_INTERVAL_MS}ms fastinter {CHECK_INTERVAL_MS}ms fall 1 rise 2

frontend relay
    bind {host}:{port}
    default_backend relays

backend relays
    balance {balance}
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""


def haproxy_child(binary: str, config_file: Path, log_dir: Path) -> Child:
    """A (not started) HAProxy process in the foreground (``-db``) with its log."""
    return Child("haproxy", [binary, "-db", "-f", str(config_file)], log_dir)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_haproxy(child: Child, port: int, timeout: float) -> None:
    """Wait until HAProxy listens on ``port``.

    Raises:
        CliError: it exited (with its log's last line) or did not listen in time.
    """
    wait_until(lambda: listening(port), timeout, "haproxy to listen", alive=child.check_alive)
