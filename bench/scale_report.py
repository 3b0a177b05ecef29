"""Output of ``bench.scale``: the goals of issue 11, the JSON keys, the table."""

from __future__ import annotations

from typing import Any

# key: (comparison, bound, as shown in the table)
GOALS = {
    "relay_rss_per_agent_kib": ("<=", 64.0, "<= 64 KiB"),
    "relay_rss_per_stream_kib": ("<=", 4.0, "<= 4 KiB"),
    "idle_cpu_percent": ("<=", 5.0, "<= 5 %"),
    "connect_cpu_ms_per_agent": ("<=", 1.5, "<= 1.5 ms"),
    "restart_reconnect_seconds": ("<=", 15.0, "<= 15 s"),
    "restart_tracebacks": ("<=", 0.0, "0"),
    "readyz_worst_ms": ("<", 1000.0, "< 1000 ms"),
    "metrics_worst_ms": ("<", 1000.0, "< 1000 ms"),
    "api_worst_ms": ("<", 1000.0, "< 1000 ms"),
    "fairness_ratio": (">=", 0.9, ">= 0.9"),
}

# Every key of the JSON line, in table order; a part not run (--only) leaves
# its keys null. Units are in the names.
ALL_KEYS = (
    # set-up
    "load_average_start", "load_average_end", "agents_requested", "agents_connected", "workers", "fd_limit",
    "relay_gauge_missing", "registration", "keygen_seconds",
    "register_seconds",
    # memory
    "relay_rss_base_kib", "relay_rss_agents_kib", "relay_rss_per_agent_kib", "streams_open",
    "relay_rss_per_stream_kib", "idle_seconds", "idle_cpu_percent",
    # connect
    "connect_seconds", "connect_cpu_ms_per_agent", "connect_relay_cpu_percent",
    "connect_workers_cpu_percent", "connect_listen_overflows",
    # restart
    "restart_all_reconnected", "restart_relay_start_seconds", "restart_reconnect_seconds",
    "restart_reconnect_from_kill_seconds", "restart_relay_cpu_percent", "restart_workers_cpu_percent",
    "restart_listen_overflows", "restart_tracebacks", "restart_retry_after_seen",
    "readyz_worst_ms", "metrics_worst_ms", "api_worst_ms", "poll_worst_connect_ms", "poll_failures",
    # fairness
    "fairness_alone_mib_s", "fairness_stalled_mib_s", "fairness_ratio",
)


def goal_met(key: str, value: Any) -> str:
    """``yes`` / ``NO`` for a figure with a goal, else empty."""
    if key not in GOALS or not isinstance(value, int | float):
        return ""
    op, bound, _ = GOALS[key]
    ok = value <= bound if op == "<=" else value < bound if op == "<" else value >= bound
    return "yes" if ok else "NO"


def table(result: dict[str, Any]) -> str:
    """A plain-text table of the figures measured (measure, value, goal, met)."""
    rows = [("measure", "value", "goal", "met")]
    for key in ALL_KEYS:
        value = result.get(key)
        if value is None:
            continue
        rows.append((key, str(value), GOALS[key][2] if key in GOALS else "", goal_met(key, value)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
