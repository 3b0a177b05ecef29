"""Real kubectl against the streaming handlers: ``exec -it`` under a pty with
a resize, ``attach``, ``cp`` both ways and ``logs -f``."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.sandbox.test_streaming_harness import WAIT, Harness, make_pod, running_harness
from tests.support.kubectl import require_kubectl
from tests.support.sandbox import SessionSpy
from tests.support.waits import until

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(120)]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path, [make_pod()]) as h:
        yield h


async def _kubectl(h: Harness, version: str, *args: str, stdin: bytes | None = None
                   ) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        require_kubectl(version), "--kubeconfig", str(h.kubeconfig), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out, err


class PtyReader:
    """Collects what kubectl writes to its terminal."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.buf = b""
        os.set_blocking(master, False)

    async def expect(self, needle: bytes) -> None:
        """Wait (bounded) until ``needle`` appears after what was consumed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while needle not in self.buf:
            if loop.time() > deadline:
                raise AssertionError(f"{needle!r} not seen; terminal had {self.buf[-300:]!r}")
            with contextlib.suppress(BlockingIOError, OSError):
                self.buf += os.read(self.master, 65536)
            await asyncio.sleep(0.02)
        self.buf = self.buf[self.buf.index(needle) + len(needle):]


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_kubectl_exec_it_under_pty_sees_resize(harness: Harness, version: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``exec -it -- sh`` in a pty: size at start, a SIGWINCH resize, exit code."""
    kubectl = require_kubectl(version)
    spy = SessionSpy(harness.runtimes["p"], monkeypatch)
    master, slave = pty.openpty()
    _set_size(slave, 30, 100)
    proc = await asyncio.create_subprocess_exec(
        kubectl, "--kubeconfig", str(harness.kubeconfig), "exec", "-it", "p", "--", "sh",
        stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    term = PtyReader(master)
    try:
        await term.expect(b"/ # ")
        os.write(master, b"stty size\r")
        await term.expect(b"30 100\r\n")
        _set_size(master, 50, 160)
        proc.send_signal(signal.SIGWINCH)
        session = await spy.session()
        await until(lambda: session.terminal_size == (160, 50), "kubectl's resize in the session")
        os.write(master, b"stty size\r")
        await term.expect(b"50 160\r\n")
        os.write(master, b"exit 3\r")
        assert await asyncio.wait_for(proc.wait(), WAIT) == 3
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_kubectl_attach_echoes_stdin_lines(harness: Harness, version: str) -> None:
    """``attach -i``: the main process echoes each stdin line (and logs it)."""
    code, out, err = await _kubectl(harness, version, "attach", "-i", "p",
                                    stdin=b"line one\nline two\n")
    assert code == 0, err
    assert out == b"line one\nline two\n"
    log = [x async for x in harness.runtimes["p"].log_stream(None)]
    assert log[-2:] == [b"line one\n", b"line two\n"]


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_kubectl_cp_copies_a_directory_both_ways(harness: Harness, version: str,
                                                       tmp_path: Path) -> None:
    """``cp`` to the pod (tar -x) and back (tar -c) keeps names and bytes."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    code, _, err = await _kubectl(harness, version, "cp", str(src), "p:/tmp/dest")
    assert code == 0, err
    fs = harness.runtimes["p"].containers["main"].fs
    assert fs.read("/tmp/dest/a.txt") == b"alpha\n"
    assert fs.read("/tmp/dest/sub/b.bin") == bytes(range(256)) * 100

    back = tmp_path / "back"
    code, _, err = await _kubectl(harness, version, "cp", "p:/tmp/dest", str(back))
    assert code == 0, err
    assert (back / "a.txt").read_bytes() == b"alpha\n"
    assert (back / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 100


async def test_kubectl_cp_with_retries_resumes_through_tail(harness: Harness,
                                                            tmp_path: Path) -> None:
    """``cp --retries`` runs ``sh -c 'tar cf - P | tail -c+N'`` and still works."""
    harness.runtimes["p"].containers["main"].fs.write("/tmp/f.txt", b"payload\n")
    code, _, err = await _kubectl(harness, "1.33", "cp", "--retries=2", "p:/tmp/f.txt",
                                  str(tmp_path / "f.txt"))
    assert code == 0, err
    assert (tmp_path / "f.txt").read_bytes() == b"payload\n"


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_kubectl_logs_follow_shows_appended_line(harness: Harness, version: str) -> None:
    """``logs -f`` prints a line written to /proc/1/fd/1 after it started."""
    proc = await asyncio.create_subprocess_exec(
        require_kubectl(version), "--kubeconfig", str(harness.kubeconfig), "logs", "-f", "p",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert first == b"container main started (image busybox:1.36)\n"
        code, _, err = await _kubectl(harness, version, "exec", "p", "--", "sh", "-c",
                                      "echo appended later > /proc/1/fd/1")
        assert code == 0, err
        assert await asyncio.wait_for(proc.stdout.readline(), WAIT) == b"appended later\n"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)


async def test_kubectl_attach_it_under_pty_echoes_and_detaches(harness: Harness,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``attach -it``: a typed line comes back (CRLF), Ctrl-D ends the session.

    The pod's container has no TTY, so kubectl leaves the terminal in cooked
    mode and the line discipline echoes the typed line itself: the pod's echo
    is the second copy, and the pod's log proves the line reached it."""
    spy = SessionSpy(harness.runtimes["p"], monkeypatch)
    master, slave = pty.openpty()
    _set_size(slave, 24, 80)
    proc = await asyncio.create_subprocess_exec(
        require_kubectl("1.33"), "--kubeconfig", str(harness.kubeconfig), "attach", "-it", "p",
        stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    term = PtyReader(master)
    try:
        await spy.session()  # attached: what is typed now reaches the pod
        os.write(master, b"typed here\r")
        await term.expect(b"typed here\r\n")  # the terminal's own echo
        await term.expect(b"typed here\r\n")  # the pod's
        log = [x async for x in harness.runtimes["p"].log_stream(None)]
        assert log[-1] == b"typed here\n"
        os.write(master, b"\x04")
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
