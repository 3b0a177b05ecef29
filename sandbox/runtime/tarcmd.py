"""``tar`` over the in-memory filesystem, as ``kubectl cp`` drives it.

kubectl (1.27 … 1.33) runs, to a pod: ``tar -xmf - -C DIR`` (older: ``tar xf -``),
after ``test -d DEST``; from a pod: ``tar cf - PATH`` or, with ``--retries``,
``sh -c 'tar cf - PATH | tail -c+N'``. Member names drop the leading ``/``
as GNU tar does, and kubectl strips that prefix when it unpacks.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from typing import TYPE_CHECKING

from sandbox.runtime.fs import FsError
from sandbox.runtime.shell import read_all

if TYPE_CHECKING:
    from sandbox.runtime.shell import Ctx

# An archive is read whole before it is unpacked; cap what a client can send.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024


def _parse(argv: list[str]) -> tuple[str, str | None, str | None, list[str]]:
    """(mode, archive, directory, paths) from tar's many argv styles."""
    mode, archive, directory = "", None, None
    paths: list[str] = []
    args = list(argv)
    first = True
    while args:
        a = args.pop(0)
        if a.startswith("--"):
            if a.startswith("--directory="):
                directory = a.split("=", 1)[1]
            elif a.startswith("--file="):
                archive = a.split("=", 1)[1]
            first = False
            continue
        if (a.startswith("-") and len(a) > 1) or (first and not a.startswith("-")):
            for ch in a.lstrip("-"):
                if ch in "cxt":
                    mode = ch
                elif ch == "f":
                    archive = args.pop(0) if args else None
                elif ch == "C":
                    directory = args.pop(0) if args else None
            first = False
            continue
        first = False
        paths.append(a)
    return mode, archive, directory, paths


async def cmd_tar(ctx: Ctx) -> int:
    """Create (``c``), extract (``x``) or list (``t``) an archive on stdin/stdout."""
    mode, archive, directory, paths = _parse(ctx.argv[1:])
    if archive not in (None, "-"):
        await ctx.err("tar: only '-' (stdin/stdout) archives are supported in the sandbox\n")
        return 2
    fs = ctx.container.fs
    base = ctx.path(directory) if directory else ctx.cwd
    if directory and not fs.is_dir(base):
        await ctx.err(f"tar: can't change directory to '{directory}': No such file or directory\n")
        return 2
    if mode == "c":
        return await _create(ctx, base, paths)
    if mode in ("x", "t"):
        data = await read_all(ctx.stdin, MAX_ARCHIVE_BYTES)
        if len(data) > MAX_ARCHIVE_BYTES:
            await ctx.err("tar: archive too large for the sandbox\n")
            return 2
        if mode == "t":
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
                await ctx.out("".join(m.name + "\n" for m in tf.getmembers()))
            return 0
        return await _extract(ctx, base, data)
    await ctx.err("tar: need exactly one of 'c', 'x' or 't'\n")
    return 2


async def _create(ctx: Ctx, base: str, paths: list[str]) -> int:
    if not paths:
        await ctx.err("tar: empty archive\n")
        return 2
    fs = ctx.container.fs
    buf = io.BytesIO()
    status = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for p in paths:
            root = fs.resolve(p, base)
            try:
                nodes = list(fs.walk(root))
            except FsError:
                await ctx.err(f"tar: {p}: Cannot stat: No such file or directory\n")
                status = 2
                continue
            for path, node in nodes:
                # Names as GNU tar makes them: relative to -C/cwd when the
                # argument was relative, else the absolute path minus '/'.
                name = path.lstrip("/") if p.startswith("/") else posixpath.relpath(path, base)
                info = tarfile.TarInfo(name)
                info.mtime = int(node.mtime)
                info.mode = node.mode
                if node.data is None:
                    info.type = tarfile.DIRTYPE
                    tf.addfile(info)
                else:
                    info.size = len(node.data)
                    tf.addfile(info, io.BytesIO(bytes(node.data)))
    await ctx.out(buf.getvalue())
    return 1 if status and buf.tell() else status


async def _extract(ctx: Ctx, base: str, data: bytes) -> int:
    fs = ctx.container.fs
    keep_mtime = "m" not in "".join(a for a in ctx.argv[1:2])
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError:
        await ctx.err("tar: invalid tar magic\n")
        return 2
    with tf:
        for m in tf:
            # Never let a member escape the target directory.
            rel = posixpath.normpath("/" + m.name).lstrip("/")
            if not rel or rel == ".":
                continue
            target = fs.resolve(rel, base)
            try:
                if m.isdir():
                    fs.mkdir(target, parents=True, mode=m.mode or 0o755)
                elif m.isfile():
                    fs.mkdir(posixpath.dirname(target), parents=True)
                    fobj = tf.extractfile(m)
                    content = fobj.read() if fobj is not None else b""
                    fs.write(target, content, mode=m.mode or 0o644,
                             mtime=m.mtime if keep_mtime else time.time())
            except FsError as exc:
                await ctx.err(f"tar: {m.name}: {str(exc).split(': ', 1)[-1]}\n")
                return 2
    return 0
