"""Fixtures for sandbox tests, reusable by the streaming tests and by later
end-to-end tests.

``sandbox_apiserver`` runs one in-process :class:`SandboxApiServer` per test
module on its own event loop in a background thread, so synchronous callers
(kubectl subprocesses, the ``kubernetes`` client) and async tests alike can use
it, and tests can read ``server.audit`` and ``server.store`` directly.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sandbox.apiserver import SandboxApiServer

T = TypeVar("T")
# Every wait on the background loop is bounded by this (seconds).
LOOP_TIMEOUT = 30.0
# kubectl invocations are killed after this many seconds.
KUBECTL_TIMEOUT = 60.0


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run(coro)`` waits for a result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sandbox-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = LOOP_TIMEOUT) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a plain function on the loop thread (store access must happen there)."""
        async def _call() -> Any:
            return fn(*args)
        return self.run(_call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class RunningApiServer:
    """A started server plus the loop it runs on."""

    server: SandboxApiServer
    loop: LoopThread
    state_dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.server.admin_kubeconfig_path

    def kubectl(self, binary: str, *args: str, kubeconfig: Path | None = None, check: bool = True,
                input: str | None = None, timeout: float = KUBECTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``binary args`` against this server (admin kubeconfig unless given)."""
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        proc = subprocess.run([binary, *args], env=env, capture_output=True, text=True, input=input,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def token_kubeconfig(self, token: str, name: str) -> Path:
        """A kubeconfig file using ``token``."""
        return self.server.write_kubeconfig(self.state_dir / f"{name}.kubeconfig", {"token": token})

    def python_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server (admin token by default)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server.url
        cfg.ssl_ca_cert = str(self.server.ca_file)
        cfg.api_key = {"authorization": token or self.server.admin_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)


def start_apiserver(state_dir: Path, kube_version: str = "1.33.0") -> RunningApiServer:
    """Start a server on a fresh background loop (callers must ``stop_apiserver``)."""
    loop = LoopThread()
    server = SandboxApiServer(state_dir=state_dir, kube_version=kube_version, host="127.0.0.1", port=0)
    loop.run(server.start())
    return RunningApiServer(server, loop, state_dir)


def stop_apiserver(running: RunningApiServer) -> None:
    """Stop the server and its loop."""
    try:
        running.loop.run(running.server.stop())
    finally:
        running.loop.close()


@pytest.fixture(scope="module")
def sandbox_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApiServer]:
    """One API server (reporting 1.33.0) shared by the tests of a module."""
    running = start_apiserver(tmp_path_factory.mktemp("apiserver"))
    try:
        yield running
    finally:
        stop_apiserver(running)


@pytest.fixture(scope="module")
def admin_kubeconfig(sandbox_apiserver: RunningApiServer) -> Path:
    """The admin kubeconfig (static token, system:masters) of ``sandbox_apiserver``."""
    return sandbox_apiserver.kubeconfig


class LineReader:
    """Reads lines from a child's stdout pipe with a deadline (no buffering
    surprises: select() and os.read on the raw descriptor)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self.lines: list[str] = []
        self.eof = False

    def read_until(self, predicate: Any, timeout: float) -> bool:
        """Collect lines until ``predicate(line)`` holds (True), EOF or timeout (False)."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while not self.eof:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace") + "\n"
                self.lines.append(text)
                if predicate(text):
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([self._fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    self.eof = True
                self._buf += chunk
        return False


# Bound on waiting for a spawned server's ready file (seconds).
SPAWN_TIMEOUT = 30.0


@dataclass
class ApiServerProcess:
    """``python -m sandbox.apiserver`` running as a child process."""

    proc: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def kubeconfig(self) -> Path:
        return Path(self.info["admin_kubeconfig_path"])

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; returns the exit status (kills after ``timeout``)."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=timeout)
        return self.proc.returncode


def spawn_apiserver(state_dir: Path, kube_version: str = "1.33.0", *extra: str) -> ApiServerProcess:
    """Start the CLI and wait for its ready file.

    Raises:
        AssertionError: the process exited or did not become ready in time.
    """
    import json
    import sys
    import time

    ready = state_dir / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.apiserver", "--port", "0", "--state-dir", str(state_dir),
                             "--version", kube_version, "--ready-file", str(ready), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"sandbox.apiserver did not become ready: {err.strip()[-500:]}")
        time.sleep(0.02)
    return ApiServerProcess(proc, json.loads(ready.read_text()))


@pytest.fixture(scope="module")
def sandbox_apiserver_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServerProcess]:
    """One API server child process (1.33.0) per test module, stopped with SIGTERM."""
    server = spawn_apiserver(tmp_path_factory.mktemp("apiserver-proc"))
    try:
        yield server
    finally:
        server.stop()
