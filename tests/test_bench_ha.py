"""bench/ha.py runs end to end at a small size (``--quick``, the kill -9
scenario only) and keeps its output contract: a table on stderr naming each
goal with a verdict, then one JSON line, last, with the scenario's figures.
No figure is compared with a goal here: timings on a loaded machine vary."""

from __future__ import annotations

import json

import pytest

from demo.backing import missing_packages
from demo.haproxy import haproxy_binary
from tests.test_bench_scale import run_bench

pytestmark = pytest.mark.e2e

# Generous: the run takes ~30 s alone; the bound only stops a hung bench.
RUN_TIMEOUT = 240


def test_bench_ha_quick_kill_prints_table_and_json_line() -> None:
    """20 simulated agents, 2 watches, 2 forward streams, kill -9 of the demo
    agent's relay: exit 0, every kill figure in the JSON line, the relay that
    held the demo agent named, and a table row per goal with a verdict."""
    missing = missing_packages()
    if missing or haproxy_binary() is None:
        pytest.skip(f"needs the Debian packages {', '.join(missing or ['haproxy'])}")
    proc = run_bench(["--quick", "--agents", "20", "--rate", "10", "--watches", "2", "--forwards", "2",
                      "--scenarios", "kill"], RUN_TIMEOUT, module="bench.ha")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    kill = result["kill"]
    assert set(kill) >= {"victim", "affected_agents", "request_gap_s", "requests", "failed_requests",
                         "agents_reconnected_s", "routes_gone_s", "streams_ended", "streams_hung",
                         "streams_ended_not_crossing", "restart_s"}
    assert kill["victim"] in ("relay-1", "relay-2", "relay-3")
    assert kill["requests"] > 0
    assert result["load"]["gets"] > 0
    kill_verdicts = [v for goal, v in result["verdicts"].items() if goal.startswith("kill -9")]
    assert len(kill_verdicts) == 4 and all(v in ("PASS", "MISS") for v in kill_verdicts), result["verdicts"]
    table = [line for line in proc.stderr.splitlines() if line.startswith("kill -9")]
    assert len(table) == 4 and all(line.split()[-1] in ("PASS", "MISS") for line in table), table
