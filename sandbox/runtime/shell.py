"""Run parsed ``sh`` scripts and single argv commands against one container.

Pipelines run their stages one after another with the intermediate output
buffered: the built-ins are small and a sandbox has no processes, so real
concurrency would buy nothing but complexity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sandbox.runtime.fs import FsError
from sandbox.runtime.shparse import Command, Pipeline, ShellSyntaxError, expand, parse

if TYPE_CHECKING:
    from sandbox.runtime.logs import LogBuffer
    from sandbox.runtime.pod import Container
    from sandbox.runtime.process import ProcessIO

# Paths whose writes go to the container's log, as in a real pod where PID 1's
# stdout is what kubelet collects.
LOG_PATHS = frozenset({"/proc/1/fd/1", "/proc/1/fd/2"})
# Bytes a pipeline stage may buffer before the next one runs.
MAX_PIPE_BYTES = 256 * 1024 * 1024


class ShellExit(Exception):
    """``exit N`` was run: unwind the script with this status."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class In(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Out(Protocol):
    async def write(self, data: bytes) -> None: ...


async def read_all(stream: In, limit: int) -> bytes:
    """Everything until EOF, or ``limit + 1`` bytes if there is more (caller checks)."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit and (chunk := await stream.read(min(1 << 20, limit + 1 - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class StdinIn:
    """The session's stdin."""

    def __init__(self, io: ProcessIO) -> None:
        self._io = io

    async def read(self, n: int = -1) -> bytes:
        if n >= 0:
            return await self._io.read_stdin(n)
        chunks, total = [], 0
        # Bounded like a pipe buffer: a sandbox command never holds more.
        while total <= MAX_PIPE_BYTES and (chunk := await self._io.read_stdin(1 << 20)):
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)


class BytesIn:
    """A buffered pipe or an input redirection."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        chunk = bytes(self._data[self._pos:end])
        self._pos = end
        return chunk


class FuncOut:
    """The session's stdout or stderr."""

    def __init__(self, fn: Callable[[bytes], Awaitable[None]]) -> None:
        self._fn = fn

    async def write(self, data: bytes) -> None:
        await self._fn(data)


class BufferOut:
    """A pipe to the next pipeline stage."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > MAX_PIPE_BYTES:
            raise FsError("pipe: No space left on device")
        self.data += data


class NullOut:
    async def write(self, data: bytes) -> None:
        return None


class LogOut:
    """``> /proc/1/fd/1``: append to the container's log."""

    def __init__(self, log: LogBuffer) -> None:
        self._log = log

    async def write(self, data: bytes) -> None:
        self._log.write(data)


class FileOut:
    """``> file`` (truncated on open) or ``>> file``."""

    def __init__(self, container: Container, path: str, append: bool) -> None:
        self._fs = container.fs
        self._path = path
        self._fs.write(path, b"", append=append)

    async def write(self, data: bytes) -> None:
        self._fs.write(self._path, data, append=True)


@dataclass
class Ctx:
    """Everything a built-in command sees."""

    argv: list[str]
    stdin: In
    stdout: Out
    stderr: Out
    env: dict[str, str]
    container: Container
    io: ProcessIO
    cwd: str = "/"
    status: int = 0  # $? of the enclosing script
    shell: dict[str, str] = field(default_factory=dict)

    async def out(self, data: str | bytes) -> None:
        await self.stdout.write(data.encode() if isinstance(data, str) else data)

    async def err(self, data: str | bytes) -> None:
        await self.stderr.write(data.encode() if isinstance(data, str) else data)

    def path(self, p: str) -> str:
        return self.container.fs.resolve(p, self.cwd)


Builtin = Callable[[Ctx], Awaitable[int]]


async def run_argv(ctx: Ctx) -> int:
    """Run one command by name; unknown names exit 127 like ``sh``."""
    from sandbox.runtime.builtins import BUILTINS

    if not ctx.argv:
        return 0
    name = ctx.argv[0]
    fn = BUILTINS.get(name.rsplit("/", 1)[-1] if name.startswith(("/bin/", "/usr/bin/")) else name)
    if fn is None:
        await ctx.err(f"sh: {name}: not found\n")
        return 127
    try:
        return await fn(ctx)
    except FsError as exc:
        await ctx.err(f"{name}: {exc}\n")
        return 1


def _open_redirect(ctx: Ctx, op: str, target: str) -> In | Out:
    path = ctx.path(target)
    if op == "<":
        return BytesIn(ctx.container.fs.read(path))
    if path == "/dev/null":
        return NullOut()
    if path in LOG_PATHS:
        return LogOut(ctx.container.log)
    if path == "/dev/stdout":
        return ctx.stdout
    if path == "/dev/stderr":
        return ctx.stderr
    return FileOut(ctx.container, path, append=op == ">>")


async def _run_command(cmd: Command, ctx: Ctx) -> int:
    argv = [expand(w, ctx.env, ctx.status) for w in cmd.words]
    sub = Ctx(argv, ctx.stdin, ctx.stdout, ctx.stderr, ctx.env, ctx.container, ctx.io,
              ctx.cwd, ctx.status, ctx.shell)
    for r in cmd.redirects:
        target = expand(r.target, ctx.env, ctx.status)
        try:
            if r.op == ">&":
                src = sub.stdout if target == "1" else sub.stderr if target == "2" else None
                if src is None:
                    await ctx.err(f"sh: 1: Syntax error: Bad fd number {target}\n")
                    return 2
                stream: In | Out = src
            else:
                stream = _open_redirect(sub, r.op, target)
        except FsError as exc:
            await ctx.err(f"sh: 1: cannot open {target}: {str(exc).split(': ', 1)[-1]}\n")
            return 2
        if r.fd == 0:
            sub.stdin = stream  # type: ignore[assignment]
        elif r.fd == 1:
            sub.stdout = stream  # type: ignore[assignment]
        elif r.fd == 2:
            sub.stderr = stream  # type: ignore[assignment]
    if argv and argv[0] == "cd":
        dest = sub.path(argv[1] if len(argv) > 1 else "/root")
        if not ctx.container.fs.is_dir(dest):
            await ctx.err(f"sh: 1: cd: can't cd to {argv[1] if len(argv) > 1 else '/root'}\n")
            return 2
        ctx.cwd = dest
        return 0
    if argv and "=" in argv[0] and argv[0].split("=", 1)[0].isidentifier() and len(argv) == 1:
        k, v = argv[0].split("=", 1)
        ctx.env[k] = v
        return 0
    return await run_argv(sub)


async def _run_pipeline(pl: Pipeline, ctx: Ctx) -> int:
    if len(pl.commands) == 1:
        return await _run_command(pl.commands[0], ctx)
    data: bytes | None = None
    status = 0
    for i, cmd in enumerate(pl.commands):
        last = i == len(pl.commands) - 1
        buf = BufferOut()
        stage = Ctx([], ctx.stdin if data is None else BytesIn(data),
                    ctx.stdout if last else buf, ctx.stderr, ctx.env, ctx.container, ctx.io,
                    ctx.cwd, ctx.status, ctx.shell)
        try:
            status = await _run_command(cmd, stage)
        except ShellExit as exc:  # each stage is a subshell
            status = exc.code
        data = bytes(buf.data)
    return status


async def run_script(script: str, ctx: Ctx, propagate_exit: bool = False) -> int:
    """Run an ``sh -c`` script; returns its exit status.

    Args:
        script: the script text.
        ctx: the session context (its ``status`` is ``$?`` at the start).
        propagate_exit: re-raise ``ShellExit`` (the interactive shell ends on it).
    """
    try:
        program = parse(script)
    except ShellSyntaxError as exc:
        await ctx.err(f"sh: 1: {exc}\n")
        return 2
    status = ctx.status
    try:
        for and_or in program:
            ctx.status = status
            status = await _run_pipeline(and_or.first, ctx)
            for op, pl in and_or.rest:
                if (op == "&&") == (status == 0):
                    ctx.status = status
                    status = await _run_pipeline(pl, ctx)
    except ShellExit as exc:
        if propagate_exit:
            raise
        return exc.code
    return status
