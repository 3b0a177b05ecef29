"""A small in-memory POSIX-like filesystem, one per sandbox container.

Only what the built-in commands need: directories, regular files, modes and
mtimes. Paths are always absolute after ``resolve``; ``..`` never escapes
``/``. The total size is capped so a runaway ``cat > f`` cannot eat the
sandbox's memory.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

# Plenty for `kubectl cp` demos, small enough to keep a test machine healthy.
MAX_FS_BYTES = 256 * 1024 * 1024


class FsError(Exception):
    """A filesystem operation failed; ``str()`` is the strerror-like text."""


@dataclass
class Node:
    """A directory (``data is None``) or a regular file."""

    mode: int
    mtime: float = field(default_factory=time.time)
    data: bytearray | None = None

    @property
    def is_dir(self) -> bool:
        return self.data is None


class MemFS:
    """The filesystem of one container."""

    def __init__(self, max_bytes: int = MAX_FS_BYTES) -> None:
        self._nodes: dict[str, Node] = {"/": Node(0o755)}
        self._max_bytes = max_bytes
        self._used = 0
        for d in ("/tmp", "/etc", "/root", "/home", "/var", "/var/log", "/proc", "/dev"):
            self.mkdir(d, parents=True)

    @staticmethod
    def resolve(path: str, cwd: str = "/") -> str:
        """Absolute, normalised form of ``path`` relative to ``cwd``."""
        joined = posixpath.join(cwd, path)
        norm = posixpath.normpath(joined)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        return norm

    def get(self, path: str) -> Node | None:
        return self._nodes.get(self.resolve(path))

    def exists(self, path: str) -> bool:
        return self.resolve(path) in self._nodes

    def is_dir(self, path: str) -> bool:
        node = self.get(path)
        return node is not None and node.is_dir

    def is_file(self, path: str) -> bool:
        node = self.get(path)
        return node is not None and not node.is_dir

    def _parent_dir(self, path: str) -> None:
        parent = posixpath.dirname(path)
        node = self._nodes.get(parent)
        if node is None:
            raise FsError(f"{path}: No such file or directory")
        if not node.is_dir:
            raise FsError(f"{path}: Not a directory")

    def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> None:
        """Create a directory; with ``parents`` like ``mkdir -p``."""
        path = self.resolve(path)
        node = self._nodes.get(path)
        if node is not None:
            if node.is_dir and parents:
                return
            raise FsError(f"{path}: File exists")
        if parents and path != "/":
            self.mkdir(posixpath.dirname(path), parents=True)
        self._parent_dir(path)
        self._nodes[path] = Node(mode)

    def read(self, path: str) -> bytes:
        node = self.get(path)
        if node is None:
            raise FsError(f"{path}: No such file or directory")
        if node.data is None:
            raise FsError(f"{path}: Is a directory")
        return bytes(node.data)

    def write(self, path: str, data: bytes, append: bool = False, mode: int = 0o644,
              mtime: float | None = None) -> None:
        """Create or replace (or append to) a regular file."""
        path = self.resolve(path)
        node = self._nodes.get(path)
        if node is not None and node.data is None:
            raise FsError(f"{path}: Is a directory")
        if node is None:
            self._parent_dir(path)
            node = Node(mode, data=bytearray())
            self._nodes[path] = node
        assert node.data is not None
        old = len(node.data)
        new = old + len(data) if append else len(data)
        if self._used - old + new > self._max_bytes:
            raise FsError(f"{path}: No space left on device")
        if append:
            node.data += data
        else:
            node.data = bytearray(data)
            node.mode = mode
        self._used += new - old
        node.mtime = time.time() if mtime is None else mtime

    def listdir(self, path: str) -> list[str]:
        """Names directly under a directory, sorted."""
        path = self.resolve(path)
        node = self._nodes.get(path)
        if node is None:
            raise FsError(f"{path}: No such file or directory")
        if not node.is_dir:
            return [posixpath.basename(path)]
        prefix = path.rstrip("/") + "/"
        return sorted(
            p[len(prefix):] for p in self._nodes if p.startswith(prefix) and p != path
            and "/" not in p[len(prefix):]
        )

    def walk(self, path: str) -> Iterator[tuple[str, Node]]:
        """``path`` and everything below it, parents before children."""
        path = self.resolve(path)
        if path not in self._nodes:
            raise FsError(f"{path}: No such file or directory")
        prefix = path.rstrip("/") + "/"
        for p in sorted(self._nodes):
            if p == path or p.startswith(prefix):
                yield p, self._nodes[p]

    def remove(self, path: str, recursive: bool = False) -> None:
        """Delete a file, or a directory tree with ``recursive``."""
        path = self.resolve(path)
        node = self._nodes.get(path)
        if node is None:
            raise FsError(f"{path}: No such file or directory")
        if path == "/":
            raise FsError("/: Operation not permitted")
        if node.is_dir and not recursive:
            raise FsError(f"{path}: Is a directory")
        for p, n in list(self.walk(path)):
            if n.data is not None:
                self._used -= len(n.data)
            del self._nodes[p]
