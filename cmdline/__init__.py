"""What every command line of the project shares: the user-error hierarchy and
its exit codes (``errors``), ``run_cli`` (``runner``) and help, version and
subcommand helpers (``parser``).

``cmdline`` imports nothing of ours, so any package (``relay``, ``agent``,
``client``, ``identity``) may raise these errors and every entry point
reports them the same way.
"""

from cmdline.errors import (
    INTERNAL_ERROR,
    INTERRUPTED,
    OK,
    TERMINATED,
    USER_ERRORS,
    AgentOffline,
    AuthError,
    CliError,
    ClusterNotFound,
    ClusterUnreachable,
    ConfigError,
    Forbidden,
    PortInUse,
    RelayUnreachable,
    Terminated,
    exit_code_table,
)
from cmdline.parser import (
    CommandParser,
    Subcommands,
    add_command,
    add_version_argument,
    exit_codes_epilog,
    help_epilog,
    installed_version,
    version_text,
)
from cmdline.runner import run_cli

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
    "CommandParser",
    "ConfigError",
    "Forbidden",
    "PortInUse",
    "RelayUnreachable",
    "Subcommands",
    "Terminated",
    "add_command",
    "add_version_argument",
    "exit_code_table",
    "exit_codes_epilog",
    "help_epilog",
    "installed_version",
    "run_cli",
    "version_text",
]
