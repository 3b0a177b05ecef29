"""End-to-end pieces: ``arc-proxy`` as a process (on port 0, the port read
back from its ready line) and a kubectl runner."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import ChildProcess, LineReader, child_env

# arc-proxy's ready line ends with this (client/proxy_cli.py).
READY_MARK = "Ctrl-C to stop."
# Bound on arc-proxy's start-up (seconds): it logs in and opens a relay session first.
PROXY_START_TIMEOUT = 40.0
# Bound on one kubectl run (seconds).
KUBECTL_TIMEOUT = 60.0


@dataclass
class Proxy:
    """A running ``arc-proxy``; its output is in ``out`` and ``err``."""

    child: ChildProcess
    kubeconfig: Path

    @property
    def port(self) -> int:
        """The local port arc-proxy bound (it was asked for port 0)."""
        return self.child.port

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.child.proc

    @property
    def out(self) -> LineReader:
        return self.child.out

    @property
    def err(self) -> LineReader:
        return self.child.err

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Ctrl-C (or ``signum``) and its exit code: 0 when it put the kubeconfig back."""
        return self.child.stop(signum)


def start_proxy(client_config: Path, kubeconfig: Path, *extra: str, cluster: str = "demo",
                timeout: float = PROXY_START_TIMEOUT) -> Proxy:
    """``arc-proxy -n CLUSTER --port 0 --file KUBECONFIG EXTRA...`` with
    ``ARC_CONFIG=client_config``, once it printed its ready line."""
    child = ChildProcess.start(
        [sys.executable, "-m", "client.proxy_cli", "-n", cluster, "--port", "0", "--file", str(kubeconfig),
         *extra],
        ready=READY_MARK, name="arc-proxy", timeout=timeout, env=child_env(ARC_CONFIG=str(client_config)))
    return Proxy(child, kubeconfig)


class Kubectl:
    """``kubectl.<version> --kubeconfig F ...``."""

    def __init__(self, binary: str, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--kubeconfig", str(self.kubeconfig), *args]

    def run(self, *args: str, input: bytes | None = None, timeout: float = KUBECTL_TIMEOUT,
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
        """Start a long-running kubectl (watch, logs -f, port-forward); wait on its lines."""
        p = subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=child_env())
        assert p.stdout is not None and p.stderr is not None
        return p, LineReader(p.stdout), LineReader(p.stderr)


def stop(p: subprocess.Popen[str]) -> None:
    """SIGTERM, wait (bounded), then SIGKILL."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
