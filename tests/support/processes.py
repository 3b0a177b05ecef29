"""Child processes of the tests: the one way to start one, wait (bounded) for
the line that says it is ready, show its output when it is not, and stop it.

A child that serves a port binds port 0 and prints the address it got in its
ready line (``arc-relay: serving https://127.0.0.1:PORT``, arc-proxy's
``Proxy for cluster ... on https://127.0.0.1:PORT``); ``ChildProcess.port``
reads it back, so no port is ever picked by binding and closing a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from tests.support.waits import WAIT

ROOT = Path(__file__).resolve().parents[2]
# How many lines of a child's output an error message shows.
TAIL_LINES = 20
# A stopped child gets this long to exit before SIGKILL (the relay drains first).
STOP_TIMEOUT = 15.0
# How often a ready file is looked for (seconds); children write it atomically.
READY_FILE_POLL = 0.02
_URL_PORT = re.compile(r"https?://(?:127\.0\.0\.1|localhost|\[::1\]):(\d+)")

Needle = str | Callable[[str], bool]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: ours, the repo on PYTHONPATH, unbuffered output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


class LineReader:
    """Reads a child's text stream line by line in a thread, so a test can
    wait for a line with a deadline instead of blocking on the pipe forever.

    ``seen`` holds every line handed out so far (without its newline).
    """

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._ended = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put(line)
        self._lines.put("")  # end of stream

    def wait_for(self, needle: Needle, timeout: float = WAIT) -> str:
        """The next line containing ``needle`` (or for which it returns True).

        Raises:
            AssertionError: the stream ended or the deadline passed first;
                the message shows the last lines read.
        """
        matches = (lambda line: needle in line) if isinstance(needle, str) else needle
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline - time.monotonic())
            if line is None:
                raise AssertionError(f"no line with {needle!r} within {timeout} s; got {self.tail()}")
            if line == "":
                raise AssertionError(f"stream ended before a line with {needle!r}; got {self.tail()}")
            if matches(line):
                return line

    def wait_eof(self, timeout: float = WAIT) -> list[str]:
        """Every remaining line, once the stream ends.

        Raises:
            AssertionError: the stream is still open at the deadline.
        """
        start = len(self.seen)
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline - time.monotonic())) != "":
            if line is None:
                raise AssertionError(f"stream still open after {timeout} s; got {self.tail()}")
        return self.seen[start:]

    def drain(self) -> list[str]:
        """The lines read so far and not yet handed out (never waits)."""
        start = len(self.seen)
        while self._next(0) not in (None, ""):
            pass
        return self.seen[start:]

    def tail(self, lines: int = TAIL_LINES) -> list[str]:
        """The last lines read, for error messages (takes what is already buffered)."""
        self.drain()
        return self.seen[-lines:]

    def _next(self, timeout: float) -> str | None:
        """The next line ("" at end of stream), or None when none came in time."""
        if self._ended:
            return ""
        try:
            line = self._lines.get(timeout=timeout) if timeout > 0 else self._lines.get_nowait()
        except queue.Empty:
            return None
        if line == "":
            self._ended = True
            return ""
        self.seen.append(line.rstrip("\n"))
        return line


class ChildProcess:
    """A started child process with both output streams read by ``LineReader``s.

    Start one with ``ChildProcess.start`` (or ``start_async`` from a test on
    the event loop); ``ready_line`` is the line it printed when ready.
    """

    def __init__(self, name: str, proc: subprocess.Popen[str]) -> None:
        self.name = name
        self.proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self.out = LineReader(proc.stdout)
        self.err = LineReader(proc.stderr)
        self.ready_line = ""
        self.ready_info: dict[str, Any] = {}

    @classmethod
    def start(cls, argv: Sequence[str], *, ready: Needle | None = None, ready_file: Path | None = None,
              name: str | None = None, ready_on: str = "stdout", timeout: float = WAIT,
              env: dict[str, str] | None = None, cwd: Path = ROOT,
              stdin: int | None = subprocess.DEVNULL) -> ChildProcess:
        """Start ``argv`` and wait until it prints a line matching ``ready``
        (or, for a child that reports readiness in a file, until it wrote
        ``ready_file``: its JSON is then in ``ready_info``).

        Args:
            argv: the command line.
            ready: text the ready line contains, or a predicate on the line.
            ready_file: instead of ``ready``: the JSON file the child writes
                (atomically) once it serves.
            name: what messages call it (default: the program name).
            ready_on: ``"stdout"`` or ``"stderr"``, where the ready line appears.
            timeout: the bound on the wait (seconds).
            env: the whole environment (default ``child_env()``).
            cwd: working directory (the repository).
            stdin: ``subprocess.DEVNULL`` (default) or ``subprocess.PIPE``.

        Raises:
            AssertionError: it exited or was not ready in time; the message has
                its exit code and the last lines of both streams.
        """
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin,
                                text=True, cwd=cwd, env=env if env is not None else child_env())
        child = cls(name or Path(argv[0]).name, proc)
        reader = child.out if ready_on == "stdout" else child.err
        try:
            if ready_file is not None:
                child.ready_info = child._wait_ready_file(ready_file, timeout)
            else:
                assert ready is not None, "start() needs ready or ready_file"
                child.ready_line = reader.wait_for(ready, timeout)
        except AssertionError as exc:
            child.kill()
            raise AssertionError(f"{child.name} not ready ({exc}); {child.output()}") from None
        return child

    def _wait_ready_file(self, path: Path, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited before writing {path}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} not written within {timeout} s")
            time.sleep(READY_FILE_POLL)
        return dict(json.loads(path.read_text()))

    @classmethod
    async def start_async(cls, argv: Sequence[str], **options: Any) -> ChildProcess:
        """``start`` in a worker thread, so servers on the test's loop keep serving meanwhile."""
        return await asyncio.to_thread(lambda: cls.start(argv, **options))

    @property
    def port(self) -> int:
        """The port of the first loopback URL in the ready line."""
        match = _URL_PORT.search(self.ready_line)
        assert match, f"no loopback URL in {self.name}'s ready line {self.ready_line!r}"
        return int(match.group(1))

    @property
    def url(self) -> str:
        """The first URL in the ready line."""
        match = re.search(r"https?://\S+", self.ready_line)
        assert match, f"no URL in {self.name}'s ready line {self.ready_line!r}"
        return match.group(0).rstrip(".,;")

    def output(self) -> str:
        """Exit code and the last lines of stdout and stderr, for failure messages."""
        return (f"{self.name} exit code {self.proc.poll()}; stdout: {self.out.tail()}; "
                f"stderr: {self.err.tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        """Its exit code once it exits (raises ``subprocess.TimeoutExpired`` at the bound)."""
        return self.proc.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """``signum``, wait, then SIGKILL; returns the exit code. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)
        # Both streams end with the process: let the readers take the last lines
        # (a grandchild still holding a pipe open only shortens what is shown).
        for reader in (self.out, self.err):
            with contextlib.suppress(AssertionError):
                reader.wait_eof(1.0)
