"""``sh`` with no script: a line-at-a-time shell.

With a tty the client's terminal is in raw mode, so this does the line
discipline a pty would: echo, CR to newline, backspace, Ctrl-C and Ctrl-D.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.runtime.shell import ShellExit, run_script

if TYPE_CHECKING:
    from sandbox.runtime.shell import Ctx

PROMPT = "/ # "
MAX_LINE = 4096


async def _read_tty_line(ctx: Ctx, pending: bytearray) -> str | None:
    """One edited line, or None at Ctrl-D on an empty line / EOF.

    ``pending`` holds typed-ahead bytes after the line end for the next call.
    """
    line = bytearray()
    while True:
        chunk = bytes(pending) or await ctx.stdin.read(1024)
        pending.clear()
        if not chunk:
            return None if not line else line.decode(errors="replace")
        for i, b in enumerate(chunk):
            if b in (0x0D, 0x0A):
                await ctx.out(b"\r\n")
                pending += chunk[i + 1:]
                return line.decode(errors="replace")
            if b == 0x04 and not line:
                return None
            if b == 0x03:
                await ctx.out(b"^C\r\n")
                return ""
            if b in (0x7F, 0x08):
                if line:
                    del line[-1]
                    await ctx.out(b"\b \b")
            elif b >= 0x20 and len(line) < MAX_LINE:
                line.append(b)
                await ctx.out(bytes([b]))


async def interactive_shell(ctx: Ctx) -> int:
    """Read commands from stdin until EOF or ``exit``."""
    status = 0
    pending = b""
    typed_ahead = bytearray()
    while True:
        if ctx.io.tty:
            await ctx.out(PROMPT)
            text = await _read_tty_line(ctx, typed_ahead)
            if text is None:
                await ctx.out("exit\n")
                return status
        else:
            while b"\n" not in pending:
                chunk = await ctx.stdin.read(65536)
                if not chunk:
                    break
                pending += chunk
            if not pending:
                return status
            raw, _, pending = pending.partition(b"\n")
            text = raw.decode(errors="replace")
        if not text.strip():
            continue
        ctx.status = status
        try:
            status = await run_script(text, ctx, propagate_exit=True)
        except ShellExit as exc:
            return exc.code
