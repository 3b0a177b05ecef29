"""The built-in command set of sandbox containers (busybox-flavoured)."""

from __future__ import annotations

import asyncio
import re

from sandbox.runtime.fs import FsError
from sandbox.runtime.shell import Builtin, Ctx, ShellExit, run_script
from sandbox.runtime.tarcmd import cmd_tar

# `sleep` is bounded so a forgotten session cannot pin a test run for long.
MAX_SLEEP_SECONDS = 600.0
NL = b"\n"


async def cmd_echo(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    await ctx.out(" ".join(args) + ("\n" if newline else ""))
    return 0


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "a": "\a", "0": "\0", "e": "\x1b"}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text)


def _printf_once(fmt: str, args: list[str]) -> tuple[str, int]:
    """One pass of the format over ``args``: (text, arguments consumed)."""
    used = 0

    def conv(m: re.Match[str]) -> str:
        nonlocal used
        if m.group(0) == "%%":
            return "%"
        arg = args[used] if used < len(args) else ""
        used += 1
        spec = m.group(0)
        if spec[-1] in "di":
            return spec % int(arg or 0)
        if spec[-1] == "b":
            return _unescape(arg)
        return spec % arg

    return re.sub(r"%%|%-?\d*[sdb]", conv, fmt), used


async def cmd_printf(ctx: Ctx) -> int:
    if len(ctx.argv) < 2:
        await ctx.err("printf: usage: printf FORMAT [ARGUMENT]...\n")
        return 1
    fmt, args = _unescape(ctx.argv[1]), ctx.argv[2:]
    out: list[str] = []
    while True:
        text, used = _printf_once(fmt, args)
        out.append(text)
        args = args[used:]
        if not args or used == 0:
            break
    await ctx.out("".join(out))
    return 0


async def cmd_cat(ctx: Ctx) -> int:
    files = ctx.argv[1:] or ["-"]
    status = 0
    for name in files:
        if name == "-":
            while chunk := await ctx.stdin.read(65536):
                await ctx.out(chunk)
            continue
        try:
            await ctx.out(ctx.container.fs.read(ctx.path(name)))
        except FsError as exc:
            await ctx.err(f"cat: can't open '{name}': {str(exc).split(': ', 1)[-1]}\n")
            status = 1
    return status


async def cmd_env(ctx: Ctx) -> int:
    await ctx.out("".join(f"{k}={v}\n" for k, v in ctx.env.items()))
    return 0


async def cmd_exit(ctx: Ctx) -> int:
    arg = ctx.argv[1] if len(ctx.argv) > 1 else str(ctx.status)
    try:
        code = int(arg) & 0xFF
    except ValueError:
        await ctx.err(f"sh: 1: exit: Illegal number: {arg}\n")
        code = 2
    raise ShellExit(code)


async def cmd_true(ctx: Ctx) -> int:
    return 0


async def cmd_false(ctx: Ctx) -> int:
    return 1


async def cmd_sleep(ctx: Ctx) -> int:
    try:
        seconds = float(ctx.argv[1].rstrip("s"))
    except (IndexError, ValueError):
        await ctx.err("sleep: invalid number\n")
        return 1
    await asyncio.sleep(min(max(seconds, 0.0), MAX_SLEEP_SECONDS))
    return 0


async def cmd_hostname(ctx: Ctx) -> int:
    await ctx.out(ctx.container.hostname + "\n")
    return 0


async def cmd_pwd(ctx: Ctx) -> int:
    await ctx.out(ctx.cwd + "\n")
    return 0


async def cmd_ls(ctx: Ctx) -> int:
    args = [a for a in ctx.argv[1:] if not a.startswith("-")]
    status = 0
    for i, name in enumerate(args or ["."]):
        path = ctx.path(name)
        try:
            entries = ctx.container.fs.listdir(path)
        except FsError:
            await ctx.err(f"ls: {name}: No such file or directory\n")
            status = 1
            continue
        if len(args) > 1 and ctx.container.fs.is_dir(path):
            await ctx.out(("\n" if i else "") + f"{name}:\n")
        await ctx.out("".join(e + "\n" for e in entries))
    return status


async def cmd_mkdir(ctx: Ctx) -> int:
    parents = any(a in ("-p", "--parents") for a in ctx.argv[1:])
    status = 0
    for name in (a for a in ctx.argv[1:] if not a.startswith("-")):
        try:
            ctx.container.fs.mkdir(ctx.path(name), parents=parents)
        except FsError as exc:
            await ctx.err(f"mkdir: can't create directory '{name}': "
                          f"{str(exc).split(': ', 1)[-1]}\n")
            status = 1
    return status


async def cmd_rm(ctx: Ctx) -> int:
    flags = "".join(a[1:] for a in ctx.argv[1:] if a.startswith("-"))
    recursive, force = "r" in flags or "R" in flags, "f" in flags
    status = 0
    for name in (a for a in ctx.argv[1:] if not a.startswith("-")):
        try:
            ctx.container.fs.remove(ctx.path(name), recursive=recursive)
        except FsError as exc:
            if force and not ctx.container.fs.exists(ctx.path(name)):
                continue
            await ctx.err(f"rm: can't remove '{name}': {str(exc).split(': ', 1)[-1]}\n")
            status = 1
    return status


async def cmd_touch(ctx: Ctx) -> int:
    for name in (a for a in ctx.argv[1:] if not a.startswith("-")):
        path = ctx.path(name)
        if not ctx.container.fs.exists(path):
            ctx.container.fs.write(path, b"")
    return 0


async def cmd_test(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    if ctx.argv[0] == "[":
        if not args or args[-1] != "]":
            await ctx.err("[: missing ]\n")
            return 2
        args = args[:-1]
    negate = bool(args) and args[0] == "!"
    if negate:
        args = args[1:]
    fs = ctx.container.fs
    if not args:
        result = False
    elif len(args) == 1:
        result = args[0] != ""
    elif len(args) == 2:
        op, val = args
        checks = {"-d": lambda: fs.is_dir(ctx.path(val)), "-f": lambda: fs.is_file(ctx.path(val)),
                  "-e": lambda: fs.exists(ctx.path(val)), "-n": lambda: val != "",
                  "-z": lambda: val == ""}
        if op not in checks:
            await ctx.err(f"test: {op}: unknown operand\n")
            return 2
        result = checks[op]()
    elif len(args) == 3 and args[1] in ("=", "!=", "-eq", "-ne", "-lt", "-gt"):
        a, op, b = args
        try:
            if op in ("=", "!="):
                result = (a == b) == (op == "=")
            else:
                result = {"-eq": int(a) == int(b), "-ne": int(a) != int(b),
                          "-lt": int(a) < int(b), "-gt": int(a) > int(b)}[op]
        except ValueError:
            await ctx.err("test: integer expression expected\n")
            return 2
    else:
        await ctx.err("test: syntax error\n")
        return 2
    return 0 if bool(result) != negate else 1


async def cmd_stty(ctx: Ctx) -> int:
    if ctx.argv[1:] == ["size"]:
        if not ctx.io.tty or ctx.io.terminal_size is None:
            await ctx.err("stty: standard input: Not a tty\n")
            return 1
        width, height = ctx.io.terminal_size
        await ctx.out(f"{height} {width}\n")
        return 0
    return 0


def _count_arg(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag) and len(a) > len(flag):
            return a[len(flag):]
    return None


async def cmd_tail(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    files = [a for i, a in enumerate(args)
             if not a.startswith(("-", "+")) and (i == 0 or args[i - 1] not in ("-c", "-n"))]
    data = ctx.container.fs.read(ctx.path(files[0])) if files else await ctx.stdin.read()
    if (c := _count_arg(args, "-c")) is not None:
        n = int(c.lstrip("+"))
        # "-c+N": output starting with byte N (1-based), as kubectl cp resumes.
        await ctx.out(data[max(n - 1, 0):] if c.startswith("+") else (data[-n:] if n else b""))
        return 0
    n_text = _count_arg(args, "-n") or "10"
    lines = data.splitlines(keepends=True)
    n = int(n_text.lstrip("+"))
    await ctx.out(b"".join(lines[max(n - 1, 0):] if n_text.startswith("+")
                           else (lines[-n:] if n else [])))
    return 0


async def cmd_head(ctx: Ctx) -> int:
    args = ctx.argv[1:]
    files = [a for i, a in enumerate(args)
             if not a.startswith("-") and (i == 0 or args[i - 1] not in ("-c", "-n"))]
    data = ctx.container.fs.read(ctx.path(files[0])) if files else await ctx.stdin.read()
    if (c := _count_arg(args, "-c")) is not None:
        await ctx.out(data[: int(c)])
    else:
        n = int(_count_arg(args, "-n") or "10")
        await ctx.out(b"".join(data.splitlines(keepends=True)[:n]))
    return 0


async def cmd_wc(ctx: Ctx) -> int:
    data = await ctx.stdin.read()
    if "-c" in ctx.argv:
        await ctx.out(f"{len(data)}\n")
    elif "-l" in ctx.argv:
        await ctx.out(f"{data.count(NL)}\n")
    else:
        await ctx.out(f"{data.count(NL)} {len(data.split())} {len(data)}\n")
    return 0


async def cmd_sh(ctx: Ctx) -> int:
    from sandbox.runtime.interactive import interactive_shell

    args = ctx.argv[1:]
    if args and args[0] == "-c":
        if len(args) < 2:
            await ctx.err("sh: -c requires an argument\n")
            return 2
        return await run_script(args[1], ctx)
    if args:
        try:
            script = ctx.container.fs.read(ctx.path(args[0])).decode(errors="replace")
        except FsError:
            await ctx.err(f"sh: 0: cannot open {args[0]}: No such file\n")
            return 2
        return await run_script(script, ctx)
    return await interactive_shell(ctx)


BUILTINS: dict[str, Builtin] = {
    "echo": cmd_echo, "printf": cmd_printf, "cat": cmd_cat, "env": cmd_env,
    "printenv": cmd_env, "exit": cmd_exit, "true": cmd_true, "false": cmd_false,
    "sleep": cmd_sleep, "hostname": cmd_hostname, "pwd": cmd_pwd, "ls": cmd_ls,
    "mkdir": cmd_mkdir, "rm": cmd_rm, "touch": cmd_touch, "test": cmd_test, "[": cmd_test,
    "stty": cmd_stty, "tail": cmd_tail, "head": cmd_head, "wc": cmd_wc, "sh": cmd_sh,
    "tar": cmd_tar,
}
