"""The README's demo command, as written: `./run demo` starts everything,
prints the next commands, and Ctrl-C leaves no process and no file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from demo import load_demo_identity
from tests.support.processes import ROOT, LineReader

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


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text in (entry / "cmdline").read_bytes().decode(errors="replace") and _alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _secret_file_problems(state: Path, secrets: list[str]) -> list[str]:
    """Files under ``state`` holding a private key or one of ``secrets`` that
    anyone but the owner can read."""
    problems = []
    for path in state.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_bytes().decode(errors="replace")
        if ("PRIVATE KEY" in text or any(s and s in text for s in secrets)) \
                and path.stat().st_mode & 0o077:
            problems.append(f"{path.relative_to(state)} {oct(path.stat().st_mode & 0o777)}")
    return problems


# Where to stop: (line to wait for, signals to send; after the first the test
# waits for "Stopping the demo..." and sends the rest).
STOP_POINTS = {
    "apiserver-starting": ("files in ", [signal.SIGINT]),
    "relay-starting": ("[2/7]", [signal.SIGINT]),
    "agent-connecting": ("[5/7]", [signal.SIGTERM]),
    "stopping-then-more-signals": ("Ctrl-C here stops", [signal.SIGINT, signal.SIGINT, signal.SIGTERM]),
}


@pytest.mark.parametrize("point", list(STOP_POINTS))
def test_demo_stops_cleanly_on_signal_at_any_point(tmp_path: Path, point: str) -> None:
    """SIGINT/SIGTERM during start-up and repeated during the stop: exit 0,
    'Demo stopped.', nothing on stderr, no child process, no file left. When
    the demo got to 'Ready', every file holding a key, the sandbox admin token
    or a password was 0600."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    config = home / ".config" / "cluster-connect" / "config.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("ARC_CONFIG", "KUBECONFIG", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp), ARC_CONFIG=str(config), PYTHONPATH=str(ROOT))
    wait_line, signals = STOP_POINTS[point]
    p = subprocess.Popen([sys.executable, "-m", "client.arcctl", "demo"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = LineReader(p.stdout)
    err = LineReader(p.stderr)
    try:
        first = out.wait_for("files in ", 60)
        state = Path(first.split("files in ", 1)[1].split(")")[0])
        if wait_line != "files in ":
            out.wait_for(wait_line, 120)
        if point == "stopping-then-more-signals":
            info = json.loads((state / "demo.json").read_text())
            ids = load_demo_identity()
            secrets = [str(info["apiserver"]["admin_token"]), ids.password, ids.admin_password,
                       ids.group_reader_secret]
            assert not _secret_file_problems(state, secrets)
            assert config.stat().st_mode & 0o077 == 0
        p.send_signal(signals[0])
        if len(signals) > 1:
            out.wait_for("Stopping the demo...", 30)
            for sig in signals[1:]:
                p.send_signal(sig)
        assert p.wait(60) == 0, (out.seen[-5:], err.seen)
        out.wait_for("Demo stopped.", 5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    with pytest.raises(AssertionError, match="stream ended"):
        err.wait_for("\n", 5)  # stderr: nothing but EOF
    assert not _processes_mentioning(str(state))
    assert not state.exists()
    assert not config.exists()
    assert list(tmp.iterdir()) == []
