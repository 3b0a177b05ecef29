"""Errors a user can cause: each is one line on stderr (cause and fix) and an exit code."""

from __future__ import annotations

__all__ = ["CliError", "ConfigError"]


class CliError(Exception):
    """A failure the user can fix; ``str(err)`` is the single line shown."""

    exit_code = 1


class ConfigError(CliError):
    """A config file is missing, unreadable or invalid."""

    exit_code = 2
