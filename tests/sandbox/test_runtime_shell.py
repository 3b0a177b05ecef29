"""The built-in command interpreter: parsing, built-ins, redirections, tar."""

from __future__ import annotations

import asyncio
import io
import tarfile

import pytest

from sandbox.runtime import PodRuntime, ProcessIO
from sandbox.runtime.shparse import ShellSyntaxError, parse, tokenize


def _pod() -> dict:
    return {"metadata": {"name": "web-1", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "app", "image": "busybox",
                                     "env": [{"name": "COLOR", "value": "blue"}]},
                                    {"name": "side", "image": "busybox"}]}}


async def run(rt: PodRuntime, argv: list[str], stdin: bytes = b"", tty: bool = False,
              container: str | None = None) -> tuple[int, bytes, bytes]:
    """Exec ``argv``; returns (exit code, stdout, stderr)."""
    out, err = bytearray(), bytearray()
    reader = asyncio.StreamReader()
    reader.feed_data(stdin)
    reader.feed_eof()

    async def o(d: bytes) -> None:
        out.extend(d)

    async def e(d: bytes) -> None:
        err.extend(d)

    io_ = ProcessIO(stdin=reader, stdout=o, stderr=e, tty=tty)
    code = await asyncio.wait_for(rt.exec(container, argv, io_), 10)
    return code, bytes(out), bytes(err)


async def sh(rt: PodRuntime, script: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    return await run(rt, ["sh", "-c", script], stdin)


@pytest.fixture
def rt() -> PodRuntime:
    return PodRuntime(_pod())


def test_tokenizer_keeps_quotes_and_fd_redirections() -> None:
    """Quoted operators stay words; ``2>`` is a redirection of fd 2."""
    toks = tokenize("echo 'a;b' \"c d\" 2>/dev/null")
    assert [t.kind for t in toks] == ["word", "word", "word", "ionum", "op", "word"]
    assert parse("a && b || c; d | e")[0].rest[0][0] == "&&"


@pytest.mark.parametrize("script", ["echo 'open", "| x", "echo >", "a && && b"])
def test_parser_rejects_bad_syntax(script: str) -> None:
    """Unterminated quotes and dangling operators are syntax errors."""
    with pytest.raises(ShellSyntaxError):
        parse(script)


async def test_runtime_shell_runs_lists_and_conditionals(rt: PodRuntime) -> None:
    """``;``, ``&&``, ``||`` and ``$?`` behave as in sh."""
    assert await sh(rt, "false || echo a && echo b; false; echo $?") == (0, b"a\nb\n1\n", b"")
    assert (await sh(rt, "true && exit 4; echo never"))[0] == 4


async def test_runtime_env_comes_from_the_container_spec(rt: PodRuntime) -> None:
    """env lists PATH, HOSTNAME and the spec's variables; expansion works."""
    assert (await run(rt, ["env"]))[0] == 0
    _, out, _ = await run(rt, ["env"])
    assert b"COLOR=blue\n" in out and b"HOSTNAME=web-1\n" in out
    assert (await sh(rt, 'echo "$COLOR-${HOSTNAME}" \'$COLOR\''))[1] == b"blue-web-1 $COLOR\n"


async def test_runtime_cat_copies_stdin_until_eof(rt: PodRuntime) -> None:
    """cat with no file copies stdin byte for byte."""
    data = bytes(range(256)) * 1000
    assert await run(rt, ["cat"], data) == (0, data, b"")


async def test_runtime_unknown_command_exits_127(rt: PodRuntime) -> None:
    """Unknown commands: 127 and ``sh: X: not found``."""
    assert await run(rt, ["bogus", "x"]) == (127, b"", b"sh: bogus: not found\n")
    assert await sh(rt, "bogus") == (127, b"", b"sh: bogus: not found\n")


async def test_runtime_redirections_pipes_and_files(rt: PodRuntime) -> None:
    """>, >>, <, 2>&1, pipes, mkdir -p, ls, rm, test."""
    script = ("mkdir -p /data/x && echo one > /data/x/f && echo two >> /data/x/f; "
              "cat < /data/x/f | tail -n 1; ls /data/x; cat /nope 2>&1; "
              "rm -r /data/x; test -d /data/x || echo gone")
    code, out, err = await sh(rt, script)
    assert out == b"two\nf\ncat: can't open '/nope': No such file or directory\ngone\n"
    assert (code, err) == (0, b"")


async def test_runtime_proc_1_fd_1_appends_to_the_log(rt: PodRuntime) -> None:
    """Writing to /proc/1/fd/1 lands in the container's log, not on stdout."""
    assert await sh(rt, "echo to-log > /proc/1/fd/1") == (0, b"", b"")
    lines = [x async for x in rt.log_stream("app")]
    assert lines[-1] == b"to-log\n"
    assert [x async for x in rt.log_stream("side")] == [
        b"container side started (image busybox)\n"]


async def test_runtime_printf_hostname_and_exit_codes(rt: PodRuntime) -> None:
    """printf formats, hostname is the pod name, exit N sets the status."""
    assert await sh(rt, "printf '%s=%d\\n' a 1 b 2") == (0, b"a=1\nb=2\n", b"")
    assert await run(rt, ["hostname"]) == (0, b"web-1\n", b"")
    assert (await run(rt, ["sh", "-c", "exit 300"]))[0] == 300 & 0xFF


async def test_runtime_tty_output_uses_crlf_and_stty_size(rt: PodRuntime) -> None:
    """With a tty stderr merges into stdout with CRLF; stty without a size fails."""
    code, out, err = await run(rt, ["sh", "-c", "echo a; echo b >&2"], tty=True)
    assert (code, out, err) == (0, b"a\r\nb\r\n", b"")
    assert (await run(rt, ["stty", "size"]))[0] == 1


async def test_runtime_tar_round_trip_as_kubectl_cp_uses_it(rt: PodRuntime) -> None:
    """``tar -xmf - -C DIR`` unpacks; ``tar cf - PATH`` and the tail variant pack."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("d/a.txt", b"A"), ("d/sub/b.txt", b"B" * 5000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert (await run(rt, ["tar", "-xmf", "-", "-C", "/tmp"], buf.getvalue()))[0] == 0
    code, packed, _ = await run(rt, ["tar", "cf", "-", "/tmp/d"])
    assert code == 0
    with tarfile.open(fileobj=io.BytesIO(packed)) as tf:
        names = tf.getnames()
        assert tf.extractfile("tmp/d/sub/b.txt").read() == b"B" * 5000  # type: ignore[union-attr]
    assert names == ["tmp/d", "tmp/d/a.txt", "tmp/d/sub", "tmp/d/sub/b.txt"]
    _, tail, _ = await sh(rt, "tar cf - /tmp/d | tail -c+513")
    assert tail == packed[512:]
    assert (await run(rt, ["tar", "xf", "-", "-C", "/missing"], buf.getvalue()))[0] == 2


async def test_runtime_tar_never_writes_outside_the_target(rt: PodRuntime) -> None:
    """A member named ../../etc/x lands under the -C directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"!"))
    assert (await run(rt, ["tar", "xf", "-", "-C", "/tmp"], buf.getvalue()))[0] == 0
    assert rt.containers["app"].fs.read("/tmp/etc/evil") == b"!"
    assert not rt.containers["app"].fs.exists("/etc/evil")


async def test_runtime_interactive_sh_reads_commands_from_stdin(rt: PodRuntime) -> None:
    """``sh`` without -c runs stdin line by line until exit."""
    assert await run(rt, ["sh"], b"echo 1\necho 2\nexit 5\necho no\n") == (5, b"1\n2\n", b"")


async def test_runtime_container_selection(rt: PodRuntime) -> None:
    """Empty name picks the first container; an unknown one raises."""
    from sandbox.runtime import ContainerNotFound

    assert rt.container("").name == "app"
    with pytest.raises(ContainerNotFound):
        rt.container("nope")


async def test_runtime_tar_reads_stdin_arriving_in_pieces(rt: PodRuntime) -> None:
    """tar -x waits for EOF even when the archive trickles in (short reads)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 300_000
        tf.addfile(info, io.BytesIO(b"z" * 300_000))
    reader = asyncio.StreamReader()

    async def feed() -> None:
        data = buf.getvalue()
        for i in range(0, len(data), 10_000):
            reader.feed_data(data[i:i + 10_000])
            await asyncio.sleep(0)
        reader.feed_eof()

    async def sink(_: bytes) -> None:
        return None

    feeder = asyncio.create_task(feed())
    io_ = ProcessIO(stdin=reader, stdout=sink, stderr=sink)
    assert await asyncio.wait_for(rt.exec(None, ["tar", "xf", "-", "-C", "/tmp"], io_), 10) == 0
    await feeder
    assert rt.containers["app"].fs.read("/tmp/big.bin") == b"z" * 300_000
