"""A relay tier under failure, measured: ``python -m bench.ha`` (issue 16's goals).

Stands up what ``arcctl demo --replicas 3`` stands up (sandbox API server and
OIDC issuer, real redis-server and PostgreSQL, three ``arc-relay`` processes,
HAProxy health-checking ``/readyz``, a real ``arc-agent`` + kube-aad-proxy for
``default/demo``), plus ``--agents`` simulated agents (real authenticated
tunnel sessions, bench/scale_agents.py, two worker processes, dialling
HAProxy) and ``--forwards`` real connectors piping to an echo server. Load
(bench/ha_load.py): ``--rate`` short GETs per second through an in-process
arc-proxy, ``--watches`` live watches, ``--forwards`` streams moving data both
ways with a sha256 check. Scenarios (bench/ha_scenarios.py):

* ``memory``: relay RSS delta per idle agent session, while the agents connect;
* ``kill``: ``kill -9`` of the relay holding the demo agent;
* ``rolling``: SIGTERM of each relay in turn, restarted before the next;
* ``redis``: redis-server killed and started again (empty);
* ``forward``: bench/forward.py's measurement (its own two relays), after the tier stopped.

Prints progress and a table (goal, measured, PASS/MISS) on stderr, then one
JSON line, last, on stdout. Timings depend on the machine's load (``loadavg``
is reported): everything here shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import forward
from bench.ha_load import Load
from bench.ha_scenarios import Scenarios, count, error_kinds
from bench.ha_setup import (
    BENCH_GROUP,
    Presence,
    bench_names,
    cluster_ssl_context,
    register_clusters,
    start_echo_agents,
)
from bench.relay_memory import rss_kib
from bench.scale_agents import raise_fd_limit
from bench.scale_workers import Workers
from client.auth import TokenSource
from client.listener import LocalListener
from client.relay_client import RelaySessionKeeper
from demo.environment import CLUSTER, RESOURCE_GROUP, DemoEnvironment
from demo.tier import PRESENCE_TTL_SECONDS

SCENARIOS = ("memory", "kill", "rolling", "redis", "forward")
WORKERS = 2
DIAL_CONCURRENCY = 32
CONNECT_TIMEOUT = 180.0
# Load runs this long before the first event (a baseline, and every watch open).
WARMUP = 5.0
# Goals (issue 16).
GOAL_GAP_S = 2.0
GOAL_RECONNECT_S = 5.0
GOAL_ADDED_P50_MS = 0.3
GOAL_THROUGHPUT_RATIO = 0.8


def say(message: str) -> None:
    print(f"bench.ha: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    agents: int
    rate: float
    watches: int
    forwards: int
    scenarios: tuple[str, ...]
    forward_args: tuple[int, int, int]  # bench.forward: rtt rounds per block, blocks, MiB per round


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.ha", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=500, help="simulated agents (each its own cluster)")
    parser.add_argument("--rate", type=float, default=50.0, help="short GETs per second")
    parser.add_argument("--watches", type=int, default=20, help="live watches")
    parser.add_argument("--forwards", type=int, default=5, help="streams moving data both ways")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 agents, a small forward phase")
    args = parser.parse_args(argv)
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {','.join(SCENARIOS)}")
    if args.quick:
        return Options(min(args.agents, 50), args.rate, args.watches, args.forwards, scenarios, (200, 2, 16))
    return Options(args.agents, args.rate, args.watches, args.forwards, scenarios, (500, 3, 64))


async def run_tier(env: DemoEnvironment, opts: Options, work: Path) -> dict[str, Any]:
    """Everything but ``forward``, on the started demo."""
    assert env.tier is not None
    tier = env.tier
    result: dict[str, Any] = {}
    agent_names, echo_names = bench_names(opts.agents, opts.forwards)
    key_pem = await register_clusters(env, agent_names + echo_names)
    say(f"registered {len(agent_names) + len(echo_names)} clusters")
    presence = Presence(tier.info()["redis_url"])
    echo_clusters = [f"{BENCH_GROUP}/{n}" for n in echo_names]
    echo = await start_echo_agents(env, echo_clusters, key_pem)
    if await presence.wait_all({*echo_clusters, f"{RESOURCE_GROUP}/{CLUSTER}"}, CONNECT_TIMEOUT) is None:
        raise RuntimeError("the demo and echo agents never connected")
    rss_before = {r.name: rss_kib(tier.pid(r.name)) for r in tier.replicas}
    workers = await Workers.start(work, env.relay_url, str(env.dir / "relay" / "ca.crt"),
                                  [(f"{BENCH_GROUP}/{n}", key_pem.decode()) for n in agent_names],
                                  WORKERS, DIAL_CONCURRENCY)
    keepers: list[RelaySessionKeeper] = []
    listener: LocalListener | None = None
    load: Load | None = None
    api_ssl = ssl.create_default_context(cafile=str(env.api["ca_file"]))
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=api_ssl))
    try:
        started = time.monotonic()
        workers.connect()
        all_agents = {f"{BENCH_GROUP}/{n}" for n in agent_names}
        connected = await presence.wait_all(all_agents, CONNECT_TIMEOUT)
        if connected is None:
            raise RuntimeError(f"only {workers.connected} of {opts.agents} agents connected")
        result["connect_s"] = round(time.monotonic() - started, 1)
        say(f"{opts.agents} simulated agents connected in {result['connect_s']} s")
        await asyncio.sleep(2.0)  # let the relays' allocations settle before reading RSS
        per_replica = {r.name: sum(1 for h in presence.routes.values() if r.name in h) for r in tier.replicas}
        delta = {name: rss_kib(tier.pid(name)) - before for name, before in rss_before.items()}
        if "memory" in opts.scenarios:
            result["memory"] = {"agents_per_replica": per_replica, "rss_delta_kib": delta,
                                "kib_per_idle_agent": round(sum(delta.values()) / max(1, opts.agents), 1)}
        cfg = env.client_config()
        for name in ("bench-ha-get", "bench-ha-forward"):  # arc-proxy's, and port-forward's
            keeper = RelaySessionKeeper(cfg, TokenSource(cfg.auth.for_relay()), name=name)
            await keeper.start()
            keepers.append(keeper)
        listener = LocalListener(keepers[0], f"{RESOURCE_GROUP}/{CLUSTER}".encode(), port=0)
        port = await listener.bind()
        await listener.serve()
        load = Load(port, cluster_ssl_context(env), str(env.api["admin_token"]), keepers[1], echo_clusters,
                    opts.rate, opts.watches)
        scenarios = Scenarios(tier, load, presence, workers, f"{RESOURCE_GROUP}/{CLUSTER}", PRESENCE_TTL_SECONDS, say)
        await scenarios.refresh()
        load.start(http, str(env.api["url"]), str(env.api["admin_token"]))
        await asyncio.sleep(WARMUP)
        for name in ("kill", "rolling", "redis"):
            if name in opts.scenarios:
                say(f"scenario {name}")
                load.phase = name
                result[name] = await getattr(scenarios, name)()
                load.phase = f"after {name}"
                await scenarios.wait_all_routes(all_agents)
        failed_by_phase: dict[str, int] = {}
        for g in load.gets:
            if g.error:
                failed_by_phase[g.phase] = failed_by_phase.get(g.phase, 0) + 1
        result["load"] = {"gets": len(load.gets), "failed_gets": sum(1 for g in load.gets if g.error),
                          "failed_gets_by_phase": failed_by_phase, "get_failure_kinds": error_kinds(load.gets),
                          "get_failure_samples": [g.error for g in load.gets if g.error][:5],
                          "watch_events": load.watch_events, "forward_rounds": load.forward_rounds,
                          "forward_bytes": load.forward_bytes, "workers": workers.stats()}
        return result
    finally:
        if load is not None:
            await load.stop()
        if listener is not None:
            await listener.close()
        for keeper in keepers:
            await keeper.close()
        await workers.stop()
        await echo.stop()
        await presence.close()
        await http.close()


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(scenario, goal, measured, passed or None for printed-only) per goal."""
    out: list[tuple[str, str, str, bool | None]] = []

    def at_most(value: float | None, goal: float) -> bool:
        return value is not None and value <= goal
    if "memory" in result:
        m = result["memory"]
        out.append(("memory", "RSS per idle agent (printed)", f"{m['kib_per_idle_agent']} KiB", None))
    if "kill" in result:
        k = result["kill"]
        out.append(("kill -9", f"new requests OK again <= {GOAL_GAP_S} s (worst)",
                    f"gap {k['request_gap_s']} s, slowest {k['slowest_ok_request_s']} s, "
                    f"{k['failed_requests']}/{k['requests']} failed", at_most(k["recovery_s"], GOAL_GAP_S)))
        out.append(("kill -9", f"affected agents back <= {GOAL_RECONNECT_S} s",
                    f"{k['agents_reconnected_s']} s ({k['affected_agents']} agents)",
                    at_most(k["agents_reconnected_s"], GOAL_RECONNECT_S)))
        out.append(("kill -9", f"dead routes gone <= {PRESENCE_TTL_SECONDS} s", f"{k['routes_gone_s']} s",
                    at_most(k["routes_gone_s"], PRESENCE_TTL_SECONDS)))
        ended, bad = count(k["streams_ended"]), count(k["streams_ended_not_crossing"])
        clean = bad == 0 and k["streams_hung"] == 0 and k["streams_ended_without_error_text"] == 0
        out.append(("kill -9", "only crossing streams end, with error, none hung",
                    f"{ended} ended (+{k['in_flight_failed']} GETs), {bad} not crossing, {k['streams_hung']} hung",
                    clean))
    if "rolling" in result:
        r = result["rolling"]
        out.append(("rolling", "0 failed short requests", f"{r['failed_requests']} of {r['requests']}",
                    r["failed_requests"] == 0))
        out.append(("rolling", "0 broken streams within grace", f"{count(r['forward_rounds_broken'])} broken, "
                    f"{r['streams_hung']} hung ({count(r['watches_ended'])} watch ends)",
                    not r["forward_rounds_broken"] and r["streams_hung"] == 0))
    if "redis" in result:
        d = result["redis"]
        out.append(("redis", "0 failed requests", f"{d['failed_requests']} of {d['requests']}",
                    d["failed_requests"] == 0))
        period = round(PRESENCE_TTL_SECONDS / 3, 2)
        out.append(("redis", f"routes back <= {period} s (one refresh)", f"{d['routes_reasserted_s']} s",
                    at_most(d["routes_reasserted_s"], period)))
    if "load" in result:
        g = result["load"]
        out.append(("load", "(whole run, printed)", f"{g['failed_gets']} of {g['gets']} GETs failed", None))
    if "forward" in result:
        f = result["forward"]
        out.append(("forward", f"added p50 <= {GOAL_ADDED_P50_MS} ms", f"{f['added_p50_ms']} ms",
                    at_most(f["added_p50_ms"], GOAL_ADDED_P50_MS)))
        out.append(("forward", f"throughput ratio >= {GOAL_THROUGHPUT_RATIO}", f"{f['throughput_ratio']}",
                    f["throughput_ratio"] >= GOAL_THROUGHPUT_RATIO))
    return out


def print_table(result: dict[str, Any]) -> None:
    table = rows(result)
    print(f"{'scenario':<9} {'goal':<50} {'measured':<44} verdict", file=sys.stderr)
    for scenario, goal, measured, passed in table:
        verdict = "-" if passed is None else "PASS" if passed else "MISS"
        print(f"{scenario:<9} {goal:<50} {measured:<44} {verdict}", file=sys.stderr)
    result["verdicts"] = {f"{s}: {g}": (None if p is None else "PASS" if p else "MISS") for s, g, _m, p in table}
    print(f"(loadavg {result['loadavg_start']} at start, {result['loadavg_end']} at end: a shared, loaded "
          "machine; timings are loaded-machine timings)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    raise_fd_limit()
    result: dict[str, Any] = {"bench": "ha", "agents": opts.agents, "rate": opts.rate, "watches": opts.watches,
                              "forwards": opts.forwards, "scenarios": list(opts.scenarios),
                              "forward_streams": "raw tunnel streams to a TCP echo server via real connectors",
                              "loadavg_start": round(os.getloadavg()[0], 2)}
    began = time.monotonic()
    tier_scenarios = [s for s in opts.scenarios if s != "forward"]
    if tier_scenarios:
        with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
            work = Path(tmp)
            env = DemoEnvironment(work / "demo", client_config_path=work / "client.yaml", replicas=3, say=say)
            try:
                env.start()  # the main thread: children die with the thread that started them
                result.update(asyncio.run(run_tier(env, opts, work)))
            finally:
                stuck = env.stop()
                if stuck:
                    say(f"still running after SIGKILL: {', '.join(stuck)}")
    if "forward" in opts.scenarios:
        say("scenario forward (bench.forward: two relays of its own)")
        result["forward"] = asyncio.run(forward.run(*opts.forward_args))
    result["seconds"] = round(time.monotonic() - began, 1)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    print_table(result)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
