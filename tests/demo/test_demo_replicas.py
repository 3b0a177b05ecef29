"""``arcctl demo --replicas 3`` (issue 16 item 7): a real redis-server, a real
PostgreSQL, three relays and HAProxy on loopback; kubectl through ``arc-proxy
-n demo`` works, keeps working after ``kill -9`` of the relay holding the agent
(bounded retries, each an actual request), the supervisor restarts that relay,
and Ctrl-C leaves no process and no file behind (PostgreSQL's temp dir included)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from demo.backing import missing_packages
from relay.presence_redis import presence_key
from tests.demo.test_demo_supervision import (
    START_TIMEOUT,
    StartDemo,
    _alive,
    _wait_connected,
    start_demo,
)
from tests.support.e2e import Kubectl, start_proxy
from tests.support.kubectl import kubectl_path
from tests.support.processes import ROOT

pytestmark = pytest.mark.e2e

__all__ = ["start_demo"]  # the fixture, imported for pytest to find

# Bound on kubectl working again after the kill: the agent redials through
# HAProxy (jittered, sub-second) and arc-proxy moves to another relay.
RECOVERY_TIMEOUT = 60.0


def _holders(redis_url: str) -> list[str]:
    """The replica ids presence lists for the demo cluster."""
    async def read() -> list[str]:
        client = aioredis.from_url(redis_url, decode_responses=True)
        try:
            return sorted(await client.hkeys(presence_key("default/demo")))
        finally:
            await client.aclose()
    return asyncio.run(read())


def test_demo_replicas_survive_kill_9_of_the_agents_relay_and_leave_nothing(
        start_demo: StartDemo, tmp_path: Path) -> None:
    """kubectl get pods through arc-proxy; kill -9 the relay holding the agent;
    kubectl works again; the relay is restarted; Ctrl-C exits 0 with every
    child gone, the state dir, PostgreSQL's dir and the client config removed."""
    missing = missing_packages()
    if missing:
        pytest.skip(f"needs the Debian packages {', '.join(missing)}")
    kubectl = kubectl_path()
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    demo = start_demo("--replicas", "3")
    info = json.loads((demo.state / "demo.json").read_text())
    tier = info["tier"]
    assert sorted(tier["replicas"]) == ["relay-1", "relay-2", "relay-3"]
    _wait_connected(demo)
    holders = _holders(tier["redis_url"])
    assert len(holders) == 1, holders
    kubeconfig = tmp_path / "kubeconfig"
    proxy = start_proxy(demo.config, kubeconfig, timeout=60)
    pids = demo.pids()
    try:
        client = Kubectl(kubectl, kubeconfig)
        assert "web-7d9f8b6c5-abcde" in client.run("get", "pods", "-A").stdout.decode()
        os.kill(pids[holders[0]], signal.SIGKILL)
        demo.out.wait_for(f"demo: {holders[0]} (pid {pids[holders[0]]}) ", 30)
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        outcomes = []
        while True:
            run = subprocess.run(client.argv("get", "pods", "-A"), capture_output=True, timeout=60)
            outcomes.append(run.returncode)
            if run.returncode == 0 and b"web-7d9f8b6c5-abcde" in run.stdout:
                break
            assert time.monotonic() < deadline, f"kubectl never worked again: {outcomes[-5:]}"
        demo.out.wait_for(f"demo: {holders[0]} restarted (pid ", START_TIMEOUT)
    finally:
        proxy.stop()
    final = demo.pids()
    assert set(final) >= {"redis", "postgres", "haproxy", "relay-1", "relay-2", "relay-3", "agent"}
    assert demo.stop() == 0
    assert not demo.config.exists() and not demo.state.exists()
    assert not Path(tier["postgres_dir"]).exists()
    assert not [pid for pid in [*pids.values(), *final.values()] if _alive(pid)]


def test_demo_replicas_refuses_a_bad_count_in_one_line() -> None:
    """``--replicas 0``: one line naming the flag, non-zero exit, nothing started."""
    run = subprocess.run([sys.executable, "-m", "demo", "--replicas", "0"], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == ["arcctl demo: --replicas must be 1 or more, not 0"], run.stderr
    assert "Starting" not in run.stdout


def test_demo_replicas_names_the_missing_debian_package_in_one_line() -> None:
    """A PATH without redis-server: one line naming the Debian package, non-zero
    exit, nothing started."""
    run = subprocess.run([sys.executable, "-m", "demo", "--replicas", "3"], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": "/nonexistent"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arcctl demo: --replicas needs redis-server"), run.stderr
    assert "apt-get install redis-server" in lines[0]
    assert "Starting" not in run.stdout
