"""``arcctl demo`` supervises its children (issue 14 item 8): kill -9 the
demo's relay and the demo reports it, restarts it, and the clients work again;
with ``--no-restart`` the relay stays down and nothing is deleted until the
demo itself stops.

Each test runs the real ``arcctl demo`` (which runs ``python -m demo``) with
its own HOME, TMPDIR and ARC_CONFIG, and waits on the demo's own report lines
and on the relay's answers, never on sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.e2e import Kubectl, start_proxy
from tests.support.kubectl import kubectl_path
from tests.support.processes import ROOT, LineReader

pytestmark = pytest.mark.e2e

START_TIMEOUT = 120.0
# Bound on the agent's redial after the relay came back (jittered backoff, loaded machine).
RECONNECT_TIMEOUT = 60.0


@dataclass
class RunningDemo:
    proc: subprocess.Popen[str]
    out: LineReader
    err: LineReader
    state: Path
    config: Path
    env: dict[str, str]

    def pids(self) -> dict[str, int]:
        return {k: int(v) for k, v in json.loads((self.state / "demo.json").read_text())["pids"].items()}

    def arcctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "client.arcctl", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> int:
        """SIGINT, as Ctrl-C; the demo's exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(60)
        self.out.wait_for("Demo stopped.", 5)
        return code


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


StartDemo = Callable[..., RunningDemo]


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[StartDemo]:
    """Starts ``arcctl demo ARGS`` and waits for its ready lines; kills what is left at the end."""
    started: list[RunningDemo] = []

    def start(*args: str) -> RunningDemo:
        home, tmp = tmp_path / "home", tmp_path / "tmp"
        home.mkdir()
        tmp.mkdir()
        config = home / ".config" / "cluster-connect" / "config.yaml"
        env = {k: v for k, v in os.environ.items() if k not in ("ARC_CONFIG", "KUBECONFIG", "XDG_CONFIG_HOME")}
        env.update(HOME=str(home), TMPDIR=str(tmp), ARC_CONFIG=str(config), PYTHONPATH=str(ROOT),
                   XDG_CACHE_HOME=str(home / ".cache"))
        proc = subprocess.Popen([sys.executable, "-m", "client.arcctl", "demo", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        demo = RunningDemo(proc, LineReader(proc.stdout), LineReader(proc.stderr), Path(), config, env)
        started.append(demo)
        first = demo.out.wait_for("files in ", START_TIMEOUT)
        demo.state = Path(first.split("files in ", 1)[1].split(")")[0])
        demo.out.wait_for("Ctrl-C here stops", START_TIMEOUT)
        return demo

    yield start
    for demo in started:
        if demo.proc.poll() is None:
            demo.proc.kill()
            demo.proc.wait(10)


def _status(demo: RunningDemo) -> str:
    r = demo.arcctl("show", "-n", "demo", "-o", "json")
    return str(json.loads(r.stdout).get("connectivityStatus")) if r.returncode == 0 else f"rc={r.returncode}"


def _wait_connected(demo: RunningDemo) -> None:
    """Until the relay reports the cluster Connected (the agent redialled on its own)."""
    deadline = time.monotonic() + RECONNECT_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        seen.append(_status(demo))
        if seen[-1] == "Connected":
            return
    raise AssertionError(f"cluster not Connected within {RECONNECT_TIMEOUT} s: {seen[-5:]}")


def _kubectl_get_pods(demo: RunningDemo, kubectl: str, tmp: Path) -> str:
    """``kubectl get pods -A`` through a fresh ``arc-proxy -n demo``."""
    kubeconfig = tmp / "kubeconfig"
    proxy = start_proxy(demo.config, kubeconfig, timeout=60)
    try:
        return Kubectl(kubectl, kubeconfig).run("get", "pods", "-A").stdout.decode()
    finally:
        proxy.stop()


def test_demo_restarts_a_killed_relay_and_the_clients_work_again(start_demo: StartDemo, tmp_path: Path) -> None:
    """kill -9 the relay: one report line, a restart on the same port with the
    same state (the registration survives), demo.json names the new pid, and the
    python client (arcctl) and, where installed, kubectl through arc-proxy work again."""
    demo = start_demo()
    old = demo.pids()
    _wait_connected(demo)
    os.kill(old["relay"], signal.SIGKILL)
    report = demo.out.wait_for(f"demo: relay (pid {old['relay']}) ", 30)
    assert "killed by SIGKILL; restarting in 0.5 s" in report, report
    restarted = demo.out.wait_for("demo: relay restarted (pid ", START_TIMEOUT)
    new_pid = int(restarted.split("(pid ", 1)[1].split(")")[0])
    assert new_pid != old["relay"] and _alive(new_pid)
    assert demo.pids() == {**old, "relay": new_pid}
    assert all(_alive(pid) for name, pid in old.items() if name != "relay")
    _wait_connected(demo)
    kubectl = kubectl_path()
    if kubectl is not None:
        assert "web-7d9f8b6c5-abcde" in _kubectl_get_pods(demo, kubectl, tmp_path)
    # Both runs of the relay wrote to the same log, kept across the restart.
    assert (demo.state / "logs" / "relay.log").read_text().count("arc-relay: serving") == 2
    final = demo.pids()
    assert demo.stop() == 0
    assert not demo.config.exists() and not demo.state.exists()
    assert not [pid for pid in [*old.values(), *final.values()] if _alive(pid)]


def test_demo_no_restart_leaves_the_relay_down_and_keeps_every_file(start_demo: StartDemo) -> None:
    """``--no-restart``: kill -9 the relay; one report line, the relay stays down
    (arcctl says the relay is unreachable, in one line), the client config, the
    state dir and the logs stay; Ctrl-C then removes them and exits 0."""
    demo = start_demo("--no-restart")
    pids = demo.pids()
    os.kill(pids["relay"], signal.SIGKILL)
    report = demo.out.wait_for(f"demo: relay (pid {pids['relay']}) ", 30)
    assert "killed by SIGKILL; left down (--no-restart)" in report, report
    shown = demo.arcctl("show", "-n", "demo")
    assert shown.returncode != 0
    assert len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert demo.config.exists()
    assert (demo.state / "logs" / "relay.log").exists() and (demo.state / "relay" / "relay.db").exists()
    assert not _alive(pids["relay"]) and demo.pids()["relay"] == pids["relay"]
    assert all(_alive(pid) for name, pid in pids.items() if name != "relay")
    assert not [line for line in demo.out.seen if "restarted" in line]
    assert demo.stop() == 0
    assert not demo.config.exists() and not demo.state.exists()
    assert not [pid for pid in pids.values() if _alive(pid)]
