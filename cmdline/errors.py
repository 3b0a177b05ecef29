"""Errors a user can cause: each is one line on stderr (cause and fix) and an exit code.

Every exit code of the four commands (``arc-relay``, ``arc-agent``,
``arc-proxy``, ``arcctl``) is defined here, so two errors can never share a
code by accident and the table in ``--help`` and ``docs/cli.md`` is generated
from one place. The codes 1-9 are stable: scripts branch on them.

Exception tree::

    CliError (1)                    a failure the user can fix
     +-- ConfigError (2)            a wrong flag or config file
     +-- RelayUnreachable (3)
     +-- AuthError (4)
     +-- Forbidden (5)
     +-- ClusterNotFound (6)
     +-- AgentOffline (7)
     +-- PortInUse (8)
     +-- ClusterUnreachable (9)

A subclass defined elsewhere (e.g. a config loader's own error type) inherits
its parent's code; it defines ``exit_code`` only by adding a row here.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "INTERNAL_ERROR",
    "INTERRUPTED",
    "OK",
    "TERMINATED",
    "USER_ERRORS",
    "AgentOffline",
    "AuthError",
    "CliError",
    "ClusterNotFound",
    "ClusterUnreachable",
    "ConfigError",
    "Forbidden",
    "PortInUse",
    "RelayUnreachable",
    "Terminated",
    "exit_code_table",
]

OK = 0
# sysexits.h EX_SOFTWARE: a bug in the command, not in what the user did.
INTERNAL_ERROR = 70
# 128 + the signal number, what a shell reports for a process the signal killed.
INTERRUPTED = 130
TERMINATED = 143


class CliError(Exception):
    """A failure the user can fix; ``str(err)`` is the line shown (several
    lines only when several problems are listed, one each)."""

    exit_code: ClassVar[int] = 1
    meaning: ClassVar[str] = "failed; the message names the cause and the fix"


class ConfigError(CliError):
    """A flag or a config file is missing, unreadable or invalid."""

    exit_code = 2
    meaning = "usage or configuration: a wrong flag, or a bad or missing config file"


class RelayUnreachable(CliError):
    """The relay did not answer (DNS, refused, TLS, timeout)."""

    exit_code = 3
    meaning = "the relay cannot be reached (name, connection, TLS or timeout)"


class AuthError(CliError):
    """No token could be obtained, or the relay refused it (expired, invalid)."""

    exit_code = 4
    meaning = "sign-in failed: no token, or the relay refused it"


class Forbidden(CliError):
    """The principal has no role that allows this."""

    exit_code = 5
    meaning = "you have no role that allows this"


class ClusterNotFound(CliError):
    """No cluster of that name is registered."""

    exit_code = 6
    meaning = "no cluster of that name is registered"


class AgentOffline(CliError):
    """The cluster is registered but its agent is not connected."""

    exit_code = 7
    meaning = "the cluster is registered but its agent is not connected"


class PortInUse(CliError):
    """A local port to listen on is taken."""

    exit_code = 8
    meaning = "a local port to listen on is in use"


class ClusterUnreachable(CliError):
    """The Kubernetes API server cannot be reached or refused our credentials."""

    exit_code = 9
    meaning = "the kube context's API server cannot be reached or refused you"


#: Every user error with a code of its own, in code order.
USER_ERRORS: tuple[type[CliError], ...] = (
    CliError, ConfigError, RelayUnreachable, AuthError, Forbidden, ClusterNotFound,
    AgentOffline, PortInUse, ClusterUnreachable,
)


class Terminated(SystemExit):
    """SIGTERM arrived before the command finished.

    A ``SystemExit`` so that ``except Exception`` does not swallow it and
    asyncio lets it out of the event loop, as it does ``KeyboardInterrupt``;
    ``finally`` blocks still run on the way out.
    """

    def __init__(self) -> None:
        super().__init__(TERMINATED)


def exit_code_table() -> list[tuple[int, str]]:
    """Every exit code of every command and what it means, in code order."""
    rows = [(OK, "success")]
    rows += [(cls.exit_code, cls.meaning) for cls in USER_ERRORS]
    rows += [
        (INTERNAL_ERROR, "internal error (a bug); --debug shows the traceback"),
        (INTERRUPTED, "interrupted by Ctrl-C (SIGINT) before it finished"),
        (TERMINATED, "terminated by SIGTERM before it finished"),
    ]
    return rows
