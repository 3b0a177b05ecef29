"""The sandbox API server for tests: in process on a loop of its own in a
background thread (so synchronous callers such as kubectl subprocesses and the
``kubernetes`` client can use it, and tests can read ``server.audit`` and
``server.store`` directly), or as a ``python -m sandbox.apiserver`` child."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sandbox.apiserver import SandboxApiServer
from sandbox.runtime import PodRuntime, ProcessIO
from tests.support.processes import ChildProcess
from tests.support.waits import until

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


def spawn_apiserver(state_dir: Path, kube_version: str = "1.33.0", *extra: str) -> ChildProcess:
    """``python -m sandbox.apiserver`` on port 0, once it wrote its ready file
    (its JSON, with the URL and port it got, is the child's ``ready_info``)."""
    return ChildProcess.start(
        [sys.executable, "-m", "sandbox.apiserver", "--port", "0", "--state-dir", str(state_dir),
         "--version", kube_version, "--ready-file", str(state_dir / "ready.json"), *extra],
        ready_file=state_dir / "ready.json", name="sandbox.apiserver")


class SessionSpy:
    """Records the ``ProcessIO`` of each exec/attach session the pod's runtime
    starts: tests wait on what the session saw (a resize, being attached)."""

    def __init__(self, runtime: PodRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sessions: list[ProcessIO] = []
        run_exec, run_attach = runtime.exec, runtime.attach

        async def exec_(container: str | None, argv: list[str], io: ProcessIO) -> int:
            self.sessions.append(io)
            return await run_exec(container, argv, io)

        async def attach(container: str | None, io: ProcessIO) -> int:
            self.sessions.append(io)
            return await run_attach(container, io)

        monkeypatch.setattr(runtime, "exec", exec_)
        monkeypatch.setattr(runtime, "attach", attach)

    async def session(self) -> ProcessIO:
        """The first session, once it started."""
        await until(lambda: self.sessions, "an exec/attach session in the pod")
        return self.sessions[0]
