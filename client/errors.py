"""Errors a user can cause, and how the command lines report them.

Every ``CliError`` becomes one line on stderr (cause + fix) and a non-zero
exit; tracebacks are printed only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from cmdline.errors import CliError, ConfigError

__all__ = [
    "AgentOffline",
    "AuthError",
    "CliError",
    "ClusterNotFound",
    "ConfigError",
    "Forbidden",
    "PortInUse",
    "RelayUnreachable",
    "run_cli",
]


class RelayUnreachable(CliError):
    """The relay did not answer (DNS, refused, TLS, timeout)."""

    exit_code = 3


class AuthError(CliError):
    """No token could be obtained, or the relay refused it (expired, invalid)."""

    exit_code = 4


class Forbidden(CliError):
    """The principal has no role that allows this."""

    exit_code = 5


class ClusterNotFound(CliError):
    """No cluster of that name is registered."""

    exit_code = 6


class AgentOffline(CliError):
    """The cluster is registered but its agent is not connected."""

    exit_code = 7


class PortInUse(CliError):
    """The local listening port is taken."""

    exit_code = 8


def run_cli(prog: str, body: Callable[[], int], *, debug: bool) -> int:
    """Run ``body`` and turn user errors into one line and an exit code.

    Args:
        prog: program name prefixed to the error line.
        body: the command; returns the exit code.
        debug: show tracebacks instead of hiding them.

    Returns:
        The exit code to pass to ``sys.exit``.
    """
    try:
        return body()
    except CliError as err:
        if debug:
            logging.getLogger("client").exception("%s failed", prog)
        print(f"{prog}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # an unexpected bug: still one line unless --debug
        if debug:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {err} (run with --debug for details)",
              file=sys.stderr)
        return 70
