"""Reading a config file and validating it against its schema."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cmdline.errors import ConfigError
from configfile.messages import problem_lines

__all__ = ["MAX_CONFIG_BYTES", "load_config_file", "read_yaml", "validate_config"]

# A config file is a few KiB of YAML; anything past 1 MiB is a wrong path (a
# log, an image) and is refused before the YAML parser spends time on it.
MAX_CONFIG_BYTES = 1 << 20

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | os.PathLike[str], *, missing: str) -> Any:
    """The parsed YAML document of ``path`` (``None`` for an empty file).

    Args:
        path: the config file.
        missing: the line shown when the file does not exist, with ``{path}``
            for its name (say how to get one).

    Raises:
        ConfigError: missing, unreadable, too large, or not YAML (``FILE:LINE:COL: ...``).
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(missing.format(path=p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}; fix the path or its permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        return yaml.safe_load(raw)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        what = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{p}: not valid YAML (nor UTF-8 text)") from None


def validate_config(model: type[M], data: Any, source: str, at: str = "") -> M:
    """``data`` (parsed YAML; ``None``: an empty file) checked against ``model``;
    ``at`` is its key path when it is one section of a file.

    Raises:
        ConfigError: one line per problem, each starting with ``source``.
    """
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError("\n".join(problem_lines(exc, model, source, at))) from None


def load_config_file(path: str | os.PathLike[str], model: type[M], *, missing: str) -> M:
    """Read ``path`` and validate it against ``model`` (both steps above)."""
    return validate_config(model, read_yaml(path, missing=missing), str(path))
