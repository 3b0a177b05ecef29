"""The events of ``bench.ha`` and what each is measured by.

Each scenario runs while the load of bench/ha_load.py runs, polls presence
in Redis (bench/ha_setup.py ``Presence``) every ``POLL`` seconds, and returns
a dict of figures; bench/ha.py turns them into table rows against the goals.
Signals are real (``kill -9``, SIGTERM to the ``arc-relay`` and
``redis-server`` processes); restarted children get the same ports and files.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.ha_load import Load, Outcome, StreamEnd
from bench.ha_setup import Presence
from bench.scale_workers import Workers
from demo.tier import RelayTier

__all__ = ["Scenarios", "count", "error_kinds", "request_gap"]

POLL = 0.1
# Bounds of each wait (a tier that never recovers ends the scenario, reported).
RECOVER_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
# After recovery, the load keeps running this long before the window closes,
# so that a late failure would still be counted.
SETTLE = 3.0
# HAProxy brings a relay back after two good checks 250 ms apart.
LB_RISE = 1.0


def request_gap(gets: list[Outcome], since: float, until: float) -> dict[str, Any]:
    """The short GETs started in [since, until): how many, how many failed and
    why, the worst gap in successful new requests (for each run of failures,
    from the first failed request's start to the end of the first request
    started after it that succeeded), and the slowest successful one.
    ``recovery_s``, the larger of the last two, is what the goal "new requests
    succeed again within N s" is checked against: a request that waited 3 s
    and then succeeded did not succeed within 2 s either."""
    window = sorted((g for g in gets if since <= g.start < until), key=lambda g: g.start)
    worst, failed_at = 0.0, None
    for g in window:
        if g.error:
            if failed_at is None:
                failed_at = g.start
        elif failed_at is not None:
            worst = max(worst, g.end - failed_at)
            failed_at = None
    if failed_at is not None:  # never recovered inside the window
        worst = max(worst, until - failed_at)
    slowest = max((g.end - g.start for g in window if not g.error), default=0.0)
    failures = [g for g in window if g.error]
    # Requests under way at ``since`` are streams the event may end, not new requests.
    in_flight = [g for g in gets if g.start < since <= g.end]
    return {"requests": len(window), "failed_requests": len(failures), "request_gap_s": round(worst, 3),
            "in_flight_requests": len(in_flight), "in_flight_failed": sum(1 for g in in_flight if g.error),
            "slowest_ok_request_s": round(slowest, 3), "recovery_s": round(max(worst, slowest), 3),
            "failure_kinds": error_kinds(failures),
            "failure_samples": [f"+{g.start - since:.2f} s: {g.error}" for g in failures[:5]]}


def describe_ends(ends: list[StreamEnd]) -> list[dict[str, Any]]:
    """Ended streams grouped by kind and error text: ``{kind, error, hung, count}``."""
    groups: dict[tuple[str, str, bool], int] = {}
    for e in ends:
        key = (e.kind, e.error, e.hung)
        groups[key] = groups.get(key, 0) + 1
    return [{"kind": k, "error": err, "hung": hung, "count": n} for (k, err, hung), n in sorted(groups.items())]


def count(described: list[dict[str, Any]]) -> int:
    return sum(int(d["count"]) for d in described)


def error_kinds(gets: list[Outcome]) -> dict[str, int]:
    """Failed GETs by error text (its part before the first colon)."""
    kinds: dict[str, int] = {}
    for g in gets:
        if g.error:
            kind = g.error.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


@dataclass
class Scenarios:
    """Runs the events against ``tier`` under ``load``."""

    tier: RelayTier
    load: Load
    presence: Presence
    workers: Workers
    demo_cluster: str
    ttl: float
    say: Callable[[str], None]

    async def refresh(self) -> dict[str, set[str]]:
        """Read presence; tell the load where each echo cluster's agent is."""
        routes = await self.presence.read()
        if routes is not None:
            for cluster in self.load.echo_clusters:
                holders = routes.get(cluster)
                if holders:
                    self.load.holder_of[cluster] = sorted(holders)[0]
        return self.presence.routes

    async def _restart(self, name: str) -> float:
        """Start ``name`` again and wait until it serves; seconds it took."""
        started = time.monotonic()
        self.tier.spawn(name)  # this (the main) thread: see demo.processes
        while not await asyncio.to_thread(self.tier.serving, name):
            if time.monotonic() - started > RECOVER_TIMEOUT:
                raise RuntimeError(f"{name} did not serve again within {RECOVER_TIMEOUT:.0f} s")
            await asyncio.sleep(POLL)
        return time.monotonic() - started

    async def _wait_exit(self, name: str) -> float:
        started = time.monotonic()
        while not self.tier.exited(name):
            if time.monotonic() - started > EXIT_TIMEOUT:
                raise RuntimeError(f"{name} did not exit within {EXIT_TIMEOUT:.0f} s")
            await asyncio.sleep(POLL / 2)
        return time.monotonic() - started

    async def wait_all_routes(self, clusters: set[str], timeout: float = RECOVER_TIMEOUT) -> float | None:
        """Until every cluster in ``clusters`` has a live route; seconds, or None."""
        waited = await self.presence.wait_all(clusters, timeout, POLL)
        await self.refresh()
        return waited

    # -- kill -9 of the relay holding the demo agent --------------------------------
    async def kill(self) -> dict[str, Any]:
        routes = await self.refresh()
        holders = routes.get(self.demo_cluster, set())
        if len(holders) != 1:
            raise RuntimeError(f"the demo agent should have one route, has {sorted(holders)}")
        victim = next(iter(holders))
        affected = {c for c, h in routes.items() if victim in h}
        self.say(f"kill -9 {victim} (pid {self.tier.pid(victim)}), holding {len(affected)} agents")
        t0 = time.monotonic()
        self.tier.send_signal(victim, signal.SIGKILL)
        reconnected: float | None = None
        routes_gone: float | None = None
        # The figures below are as fine as the polls are frequent (a busy loop polls late).
        poll_max, last_poll = 0.0, t0
        while time.monotonic() - t0 < RECOVER_TIMEOUT and (reconnected is None or routes_gone is None):
            routes = await self.refresh()
            now = time.monotonic() - t0
            poll_max, last_poll = max(poll_max, time.monotonic() - last_poll), time.monotonic()
            if reconnected is None and all(routes.get(c, set()) - {victim} for c in affected):
                reconnected = now
            if routes_gone is None and not any(victim in h for h in routes.values()):
                routes_gone = now
            await asyncio.sleep(POLL)
        await self._wait_exit(victim)
        restarted = await self._restart(victim)
        await asyncio.sleep(LB_RISE + SETTLE)
        t_end = time.monotonic()
        ends = [e for e in self.load.ends if t0 <= e.at < t_end]
        # A forward stream crossed the killed relay if its agent was there or
        # its client session (through HAProxy) was: that session died with it.
        unexpected = [e for e in ends if e.kind == "forward" and e.agent_replica != victim
                      and not (e.session is not None and e.session.closed)]
        return {"victim": victim, "affected_agents": len(affected), **request_gap(self.load.gets, t0, t_end),
                "agents_reconnected_s": None if reconnected is None else round(reconnected, 3),
                "routes_gone_s": None if routes_gone is None else round(routes_gone, 3),
                "presence_poll_max_interval_s": round(poll_max, 3),
                "streams_ended": describe_ends(ends),
                "streams_ended_without_error_text": sum(1 for e in ends if not e.error),
                "streams_hung": sum(1 for e in ends if e.hung),
                "streams_ended_not_crossing": describe_ends(unexpected),
                "restart_s": round(restarted, 3)}

    # -- rolling restart -------------------------------------------------------------
    async def rolling(self) -> dict[str, Any]:
        t0 = time.monotonic()
        rows = []
        for replica in self.tier.replicas:
            name = replica.name
            routes = await self.refresh()
            held = {c for c, h in routes.items() if name in h}
            self.say(f"SIGTERM {name} (pid {self.tier.pid(name)}), holding {len(held)} agents")
            started = time.monotonic()
            self.tier.send_signal(name, signal.SIGTERM)
            moved: float | None = None
            while not self.tier.exited(name):
                if moved is None:
                    routes = await self.refresh()
                    if all(routes.get(c, set()) - {name} for c in held):
                        moved = time.monotonic() - started
                if time.monotonic() - started > EXIT_TIMEOUT:
                    raise RuntimeError(f"{name} did not exit within {EXIT_TIMEOUT:.0f} s of SIGTERM")
                await asyncio.sleep(POLL)
            stopped = time.monotonic() - started
            restarted = await self._restart(name)
            await asyncio.sleep(LB_RISE)
            rows.append({"relay": name, "agents": len(held),
                         "moved_s": None if moved is None else round(moved, 3),
                         "stop_s": round(stopped, 3), "restart_s": round(restarted, 3)})
        await asyncio.sleep(SETTLE)
        t_end = time.monotonic()
        ends = [e for e in self.load.ends if t0 <= e.at < t_end]
        broken = [e for e in ends if e.kind == "forward"]
        return {"restarts": rows, **request_gap(self.load.gets, t0, t_end),
                "forward_rounds_broken": describe_ends(broken),
                "watches_ended": describe_ends([e for e in ends if e.kind == "watch"]),
                "streams_hung": sum(1 for e in ends if e.hung)}

    # -- Redis restarted ----------------------------------------------------------------
    async def redis(self) -> dict[str, Any]:
        routes = await self.refresh()
        live = set(routes)
        self.say(f"restart redis-server (pid {self.tier.pid('redis')}), {len(live)} clusters with routes")
        t0 = time.monotonic()
        self.tier.send_signal("redis", signal.SIGKILL)
        await self._wait_exit("redis")
        await self._restart("redis")
        ready_after = time.monotonic() - t0
        reasserted = await self.wait_all_routes(live)
        await asyncio.sleep(SETTLE)
        t_end = time.monotonic()
        ends = [e for e in self.load.ends if t0 <= e.at < t_end]
        return {"clusters_with_routes": len(live), "redis_back_s": round(ready_after, 3),
                "routes_reasserted_s": None if reasserted is None else round(reasserted, 3),
                **request_gap(self.load.gets, t0, t_end),
                "streams_ended": describe_ends(ends), "presence_read_errors": self.presence.errors}
