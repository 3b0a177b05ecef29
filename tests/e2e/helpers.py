"""End-to-end helpers: line readers with deadlines, arc-proxy processes, a kubectl runner."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo import DemoEnvironment

ROOT = Path(__file__).resolve().parents[2]
READY_MARK = "Ctrl-C to stop."


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the repo on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.update(extra)
    return env


class LineReader:
    """Reads a process's stdout (or stderr) lines in a thread so tests can wait
    for a line with a deadline instead of blocking forever."""

    def __init__(self, stream: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream: object) -> None:
        for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
            self.lines.put(line)
        self.lines.put("")  # EOF marker

    def wait_for(self, needle: str, timeout: float) -> str:
        """The first line containing ``needle``; raises AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {needle!r} within {timeout} s; got {self.seen[-20:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line == "":
                raise AssertionError(f"stream ended before {needle!r}; got {self.seen[-20:]}")
            self.seen.append(line.rstrip("\n"))
            if needle in line:
                return line


@dataclass
class Proxy:
    """A running ``arc-proxy``."""

    proc: subprocess.Popen[str]
    port: int
    kubeconfig: Path
    out: LineReader
    err_lines: list[str] = field(default_factory=list)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_proxy(env: DemoEnvironment, port: int, kubeconfig: Path, *extra: str,
                timeout: float = 40.0) -> Proxy:
    """Start ``arc-proxy -n demo --port P --file F`` and wait for its ready line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.proxy_cli", "-n", "demo", "--port", str(port),
         "--file", str(kubeconfig), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=child_env(ARC_CONFIG=str(env.client_config_path)))
    out = LineReader(proc.stdout)
    err = LineReader(proc.stderr)
    try:
        out.wait_for(READY_MARK, timeout)
    except AssertionError:
        proc.kill()
        proc.wait(5)
        time.sleep(0.2)
        raise AssertionError(f"arc-proxy not ready; stderr: {err.seen or list(err.lines.queue)}") from None
    return Proxy(proc, port, kubeconfig, out, err.seen)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kubectl:
    """``kubectl.<version> --kubeconfig F ...``."""

    def __init__(self, binary: str, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--kubeconfig", str(self.kubeconfig), *args]

    def run(self, *args: str, input: bytes | None = None, timeout: float = 60.0,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run to completion; with ``check`` a non-zero exit fails with stderr shown."""
        r = subprocess.run(self.argv(*args), input=input, capture_output=True, timeout=timeout,
                           env=child_env())
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {r.returncode}: "
                                 f"{r.stderr.decode(errors='replace')[-1500:]}")
        return r

    def text(self, *args: str, **kw: object) -> str:
        return self.run(*args, **kw).stdout.decode()  # type: ignore[arg-type]

    def popen(self, *args: str) -> tuple[subprocess.Popen[str], LineReader, LineReader]:
        """Start a long-running kubectl (watch, logs -f, port-forward)."""
        p = subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=child_env())
        return p, LineReader(p.stdout), LineReader(p.stderr)


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
