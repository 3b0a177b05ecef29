"""What every command line of the project shares: the user-error hierarchy.

``cmdline`` imports nothing of ours, so any package (``relay``, ``agent``,
``client``, ``identity``) may raise these errors and any entry point may
report them the same way.
"""

from cmdline.errors import CliError, ConfigError

__all__ = ["CliError", "ConfigError"]
