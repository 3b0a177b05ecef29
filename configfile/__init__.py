"""One way to read a config file: YAML -> a pydantic model -> one line per problem.

``load_config_file(path, Model)`` reads and validates a file; ``validate_config``
validates data already parsed. Every problem a user can make -- unreadable file,
bad YAML, unknown key, wrong type, wrong value -- ends as one
:class:`cmdline.errors.ConfigError` whose message has one line per problem,
each naming the file and the key path (``limits.max_streams``).
"""

from __future__ import annotations

from configfile.messages import problem_lines
from configfile.model import ConfigModel, Secret, Text, models_in, secret_paths
from configfile.problems import MAX_NAMED_FILE_BYTES, Problems, resolve_path
from configfile.source import load_config_file, read_yaml, validate_config
from configfile.values import parse_host_port

__all__ = [
    "MAX_NAMED_FILE_BYTES",
    "ConfigModel",
    "Problems",
    "Secret",
    "Text",
    "load_config_file",
    "models_in",
    "parse_host_port",
    "problem_lines",
    "read_yaml",
    "resolve_path",
    "secret_paths",
    "validate_config",
]
