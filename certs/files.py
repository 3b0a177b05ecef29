"""Writing files that hold a secret (private key, token, password).

A secret file is 0600 from the moment it exists: it is created with
``O_CREAT | O_EXCL`` and mode 0600 under a temporary name in the same
directory, filled, flushed, then renamed over the target. There is no window
in which another user can open it (``write_bytes`` then ``chmod`` has one), and
a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["SECRET_FILE_MODE", "write_secret_file"]

SECRET_FILE_MODE = 0o600


def write_secret_file(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Create or replace ``path`` with ``data``, mode 0600 throughout.

    Returns:
        The path written.

    Raises:
        OSError: the directory is missing or not writable.
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
