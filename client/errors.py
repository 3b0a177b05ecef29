"""The user errors ``arc-proxy`` and ``arcctl`` raise, and how they report them.

They live in ``cmdline.errors`` with every other command's, so the exit-code
table of all four commands is defined in one place; this module re-exports
them for ``client``'s modules.
"""

from __future__ import annotations

from cmdline import (
    AgentOffline,
    AuthError,
    CliError,
    ClusterNotFound,
    ClusterUnreachable,
    ConfigError,
    Forbidden,
    PortInUse,
    RelayUnreachable,
    run_cli,
)

__all__ = [
    "AgentOffline",
    "AuthError",
    "CliError",
    "ClusterNotFound",
    "ClusterUnreachable",
    "ConfigError",
    "Forbidden",
    "PortInUse",
    "RelayUnreachable",
    "run_cli",
]
