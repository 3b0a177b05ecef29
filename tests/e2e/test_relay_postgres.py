"""The demo's relay process on PostgreSQL: the agent connects and
`arcctl show` reports the cluster Connected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from demo import DemoEnvironment
from tests.support.processes import ROOT, child_env

pytestmark = pytest.mark.e2e


def test_relay_process_on_postgresql_shows_the_agent_connected(tmp_path: Path, postgres_dsn: str) -> None:
    env = DemoEnvironment(tmp_path / "state", client_config_path=tmp_path / "client-config.yaml",
                          relay_database={"url": postgres_dsn})
    try:
        env.start()
        r = subprocess.run([sys.executable, "-m", "client.arcctl", "show", "-n", "demo"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT,
                           env=child_env(ARC_CONFIG=str(env.client_config_path),
                                         XDG_CACHE_HOME=str(tmp_path / "cache")))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["connectivityStatus"] == "Connected"
        assert "database" in (tmp_path / "state" / "relay" / "config.yaml").read_text()
    finally:
        env.stop()
