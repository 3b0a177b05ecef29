"""Value parsers shared by the config schemas."""

from __future__ import annotations

__all__ = ["parse_host_port"]


def parse_host_port(value: str, *, default_host: str | None = None) -> tuple[str, int]:
    """``host:port`` -> (host, port); IPv6 as ``[::1]:port``; port 0: any free port.

    Args:
        value: the text from the config file.
        default_host: the host of ``:port`` (None: a host is required).

    Raises:
        ValueError: not host:port.
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or int(port) > 65535 or not (host or default_host):
        raise ValueError("expected host:port such as '127.0.0.1:8443'")
    return host or str(default_host), int(port)
