"""The README's demo command, as written: `./run demo` starts everything,
prints the next commands, and Ctrl-C leaves no process and no file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import ROOT, LineReader

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose if it is a zombie.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_readme_run_demo_starts_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    """`./run demo` with a temp HOME/ARC_CONFIG/TMPDIR: wait for the two next
    commands, Ctrl-C, then no child process, no temp dir, no client config."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    config = home / ".config" / "cluster-connect" / "config.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("ARC_CONFIG", "KUBECONFIG", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp), ARC_CONFIG=str(config))
    # Own process group, so the Ctrl-C below reaches the whole foreground group as
    # a terminal's would.
    p = subprocess.Popen(["./run", "demo"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = LineReader(p.stdout)
    try:
        first = out.wait_for("files in ", 300)  # may install into ./.venv first
        state = Path(first.split("files in ", 1)[1].split(")")[0])
        out.wait_for("arc-proxy -n demo", 120)
        out.wait_for("kubectl get pods -A", 10)
        assert config.exists()
        pids = json.loads((state / "demo.json").read_text())["pids"]
        assert set(pids) >= {"apiserver", "idp", "relay", "agent"}
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(60) == 0, out.seen[-5:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert not [n for n, pid in pids.items() if _alive(pid)]
    assert not config.exists()
    assert not state.exists()
    assert list(tmp.iterdir()) == []
