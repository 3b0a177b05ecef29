"""The standard streams of one exec/attach session, as the streaming
transports hand them to the runtime.

Transports feed stdin into a ``StdinSource`` and supply coroutine
writers for stdout/stderr; the runtime never sees a websocket or a SPDY frame.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

Writer = Callable[[bytes], Awaitable[None]]


class StdinSource(Protocol):
    """What stdin is read from: an ``asyncio.StreamReader`` or a stream's queue."""

    async def read(self, n: int = -1) -> bytes: ...

    async def readline(self) -> bytes: ...


class ProcessIO:
    """stdin, stdout, stderr and the terminal of one session.

    Args:
        stdin: fed by the transport (``feed_data``/``feed_eof``); None when the
            client did not ask for stdin (reads then return EOF at once).
        stdout: writer for channel 1, None when not requested.
        stderr: writer for channel 2, None when not requested.
        tty: the client asked for a terminal: stderr merges into stdout and
            newlines go out as CRLF as a real pty's ONLCR would make them.
    """

    def __init__(self, *, stdin: StdinSource | None, stdout: Writer | None,
                 stderr: Writer | None, tty: bool = False) -> None:
        self.stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self.tty = tty
        self.terminal_size: tuple[int, int] | None = None  # (width, height)
        self.resizes = 0

    async def read_stdin(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes of stdin; b"" at EOF or without stdin."""
        if self.stdin is None:
            return b""
        return await self.stdin.read(n)

    async def readline_stdin(self) -> bytes:
        """One line of stdin including its newline; b"" at EOF."""
        if self.stdin is None:
            return b""
        return await self.stdin.readline()

    async def write_stdout(self, data: bytes) -> None:
        if not data or self._stdout is None:
            return
        if self.tty:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        await self._stdout(data)

    async def write_stderr(self, data: bytes) -> None:
        if self.tty:
            await self.write_stdout(data)
        elif data and self._stderr is not None:
            await self._stderr(data)

    def resize(self, width: int, height: int) -> None:
        """Record a terminal size event (``stty size`` reports the last)."""
        self.terminal_size = (width, height)
        self.resizes += 1
