"""bench/scale.py runs end to end at a small N and keeps its output contract
(a table, then one JSON line with every key), so the benchmark cannot rot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench import scale_report

ROOT = Path(__file__).resolve().parent.parent
AGENTS = 20
# Generous: the run takes ~15 s alone; the bound only stops a hung bench.
RUN_TIMEOUT = 180


def run_bench(args: list[str], timeout: float, module: str = "bench.scale") -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` in its own process group, so that a hung
    run is stopped with every process it started (relay, workers)."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{module} still running after {timeout} s: {err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_bench_scale_small_run_prints_table_and_complete_json_line() -> None:
    """20 agents in 2 workers (at most 4 handshakes in flight each, so the
    simulation's own bound is hit), 20 idle streams, a kill -9 restart and the
    fairness part: every agent connects (and reconnects), every key is in the
    JSON line, every figure is a non-negative number, and the table names each
    measure with its goal."""
    proc = run_bench(["--agents", str(AGENTS), "--streams", "20", "--workers", "2",
                      "--idle-seconds", "1", "--fairness-bytes", "4MiB", "--fairness-timeout", "5",
                      "--restart-timeout", "60", "--dial-concurrency", "4"], RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == set(scale_report.ALL_KEYS)
    assert result["agents_connected"] == AGENTS
    assert result["streams_open"] == 20
    assert result["restart_all_reconnected"] is True
    assert result["relay_gauge_missing"] is False  # agents_connected is the relay's own count
    for key, value in result.items():
        if key in ("registration", "restart_all_reconnected", "relay_gauge_missing"):
            continue
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert value >= 0, (key, value)
    assert result["fairness_alone_mib_s"] > 0
    header, rule, *rows = lines[:-1]
    assert header.split() == ["measure", "value", "goal", "met"]
    assert set(rule) <= {"-", " "}
    shown = {row.split()[0] for row in rows}
    assert set(scale_report.GOALS) <= shown


def test_bench_scale_refuses_unknown_part_in_one_line() -> None:
    """A typo in --only is one clear line and exit status 2, before anything starts."""
    proc = run_bench(["--only", "memory,speed"], 60)
    assert proc.returncode == 2
    assert "unknown part(s) speed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_scale_work_dir_keeps_agent_keys_owner_only(tmp_path: Path) -> None:
    """With --work-dir the logs stay for reading, but the folder and the worker
    specs (which carry the simulated agents' private keys) are owner-only."""
    work = tmp_path / "work"
    proc = run_bench(["--agents", "2", "--workers", "1", "--only", "connect", "--work-dir", str(work)],
                     RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["agents_connected"] == 2
    assert work.stat().st_mode & 0o077 == 0
    spec = work / "worker-0.json"
    assert "PRIVATE KEY" in spec.read_text()
    assert spec.stat().st_mode & 0o077 == 0
    assert (work / "relay-1.log").read_text().count("agent connected") >= 2
