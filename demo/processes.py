"""Child processes of ``arcctl demo`` (and of the end-to-end tests): start
with logs to a file, wait for a ready file, say how one ended, start it again,
stop with SIGTERM then SIGKILL.

Children get ``PR_SET_PDEATHSIG`` on Linux so they die with their parent even
if it is killed with SIGKILL: the demo must leave nothing behind. (The signal
fires when the *thread* that started the child exits: start children from the
main thread, as the demo, the tests and the bench do.)
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cmdline.errors import CliError
from logfmt import escape_control

__all__ = ["Child", "free_port", "wait_until"]

_PR_SET_PDEATHSIG = 1
# A child gets this long to exit after SIGTERM (the relay drains its sessions),
# then SIGKILL and this much longer to be reaped.
STOP_TIMEOUT = 8.0
KILL_TIMEOUT = 5.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's cleanup is the only guard


def free_port() -> int:
    """A currently free loopback port (the relay needs its port in its config)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.05,
               alive: Callable[[], None] | None = None) -> Any:
    """Poll ``predicate`` until it returns a truthy value.

    Args:
        predicate: returns a truthy value when done.
        timeout: seconds before giving up.
        what: names the wait in the error.
        interval: poll interval.
        alive: called each round; raises if a process we wait for has died.

    Raises:
        CliError: timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CliError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Child:
    """One child process with its log file and optional ready file.

    Args:
        name: short name used in messages and file names.
        argv: the command line.
        log_dir: where ``NAME.log`` (stdout+stderr) goes.
        env: extra environment variables.
    """

    def __init__(self, name: str, argv: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        """Start the process, appending to its log (also after it ended: the
        supervisor restarts a child with the same command and log file)."""
        env = {**os.environ, **self.env}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            # Own session: a terminal Ctrl-C reaches only the parent, which then
            # stops the children in order (agent first) instead of all at once.
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that
        signal), None while it runs or before it was started."""
        return None if self.proc is None else self.proc.poll()

    def describe_exit(self) -> str:
        """How the ended process ended, as a few words: ``killed by SIGKILL``
        or ``exited with code 1``."""
        code = self.exit_code()
        if code is None:
            return "is running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def check_alive(self) -> None:
        """Raise a one-line error with the log's tail if the child has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_tail()
            raise CliError(f"{self.name} {self.describe_exit()}"
                           + (f": {tail}" if tail else f" (see {self.log_path})"))

    def log_tail(self, lines: int = 1) -> str:
        """The last ``lines`` lines of the log as one line (`` | ``-joined, at most
        300 characters), control characters escaped: it goes into a one-line
        report and must neither break it nor drive the user's terminal."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return escape_control(" | ".join(text[-lines:])[:300])

    def wait_ready_file(self, path: Path, timeout: float = 30.0,
                        checkpoint: Callable[[], None] | None = None) -> dict[str, Any]:
        """Wait for the JSON object the child writes to ``path`` when serving.

        ``checkpoint`` is called each round too (the demo raises from it when
        asked to stop)."""
        def read() -> dict[str, Any] | None:
            try:
                text = path.read_text()
                return dict(json.loads(text)) if text.strip() else None
            except (OSError, ValueError):
                return None  # not there yet, or half written

        def alive() -> None:
            if checkpoint is not None:
                checkpoint()
            self.check_alive()
        return dict(wait_until(read, timeout, f"{self.name} to be ready", alive=alive))

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM, wait, then SIGKILL; idempotent and never raises.

        Returns:
            False only when the process is still there after SIGKILL (stuck in
            the kernel); the caller reports it.
        """
        p = self.proc
        if p is None or p.poll() is not None:
            return True
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                return False
        return True
