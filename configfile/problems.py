"""Problems found after validation (files a config names, keys needed together),
collected so that every one is reported, each on its own line."""

from __future__ import annotations

import os
from pathlib import Path

from cmdline.errors import ConfigError

__all__ = ["MAX_NAMED_FILE_BYTES", "Problems", "resolve_path"]

# Files a config names and that are read whole: PEM keys, certificates, tokens,
# secrets. Anything larger is a wrong path.
MAX_NAMED_FILE_BYTES = 1 << 20


def resolve_path(base_dir: Path, value: str) -> Path:
    """``value`` with ``~`` expanded, relative to ``base_dir`` (the config file's folder)."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base_dir / path


class Problems:
    """Lines ``SOURCE: KEY.PATH: what is wrong``; :meth:`raise_if_any` ends with
    one :class:`ConfigError` listing all of them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key_path: str, text: str) -> None:
        """Record one problem at ``key_path``."""
        self.lines.append(f"{self.source}: {key_path}: {text}")

    def read(self, base_dir: Path, value: str | None, key_path: str, *, required: bool = False,
             limit: int = MAX_NAMED_FILE_BYTES) -> bytes | None:
        """The bytes of the file a key names (``None``/``""``: none), or ``None``
        with a problem recorded (missing when required, unreadable, too large)."""
        if not value:
            if required:
                self.add(key_path, "required key is missing")
            return None
        path = resolve_path(base_dir, value)
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            self.add(key_path, f"cannot read {str(path)!r}: {exc.strerror}; fix the path or its permissions")
            return None
        if len(data) > limit:
            self.add(key_path, f"{str(path)!r} is larger than {limit} bytes; is it the right file?")
            return None
        return data

    def raise_if_any(self) -> None:
        """Raise one ConfigError with every recorded line.

        Raises:
            ConfigError: at least one problem was recorded.
        """
        if self.lines:
            raise ConfigError("\n".join(self.lines))
