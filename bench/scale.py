"""Relay scale benchmark: ``python -m bench.scale [--agents 5000] [--only PARTS]``.

One real relay process (``arc-relay --config FILE`` on 127.0.0.1, its own state
dir in a temp dir), the sandbox OIDC issuer in this process (admin and user
tokens), and N simulated agents spread over a few worker processes
(bench/scale_agents.py), each with its own cluster registered through the
management API (one PUT per cluster, as an admin) and its own agent key.

Measures, goals of issue 11 in brackets (printed as a table, then one JSON line):
- memory: relay RSS per idle agent [<= 64 KiB], per idle stream [<= 4 KiB]
  (M streams held open by simulated agents through arc-proxy-like client
  sessions), idle relay CPU with N agents [<= 5 % of one core];
- connect: relay CPU-seconds while N agents connect, per agent [<= 1.5 ms];
- restart: ``kill -9`` of the relay, restart on the same port and state dir:
  seconds until all N agents have a session again [<= 15 s], tracebacks in the
  new relay's log [0], worst latency of /readyz, /metrics and a management GET
  polled every 100 ms [each < 1 s];
- fairness: one live download of a third user, with 8 stalled streams of two
  other users on the same cluster (same agent websocket) / without [>= 0.9].

Every wait is bounded; only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from bench.scale_agents import raise_fd_limit
from bench.scale_relay import (
    Poller,
    RelayProcess,
    connect_timing,
    listen_overflows,
    metric_value,
)
from bench.scale_report import ALL_KEYS, table
from bench.scale_streams import (
    ClientSessions,
    close_streams,
    open_idle_streams,
    source_stream,
    timed_download,
)
from bench.scale_workers import Workers
from certs import client_ssl_context, generate_key_pair
from sandbox.idp import SandboxIdp
from tunnel import TunnelSession
from tunnel.aio import tune_allocator

PARTS = ("memory", "connect", "restart", "fairness")
RESOURCE_GROUP = "bench"
AGENT_GAUGE = ("arc_relay_sessions_open", 'kind="agent"')


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the table and the JSON line."""
    print(f"bench.scale: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    """The command line (``parse_args``); see ``--help`` for each option."""

    agents: int
    workers: int
    streams: int
    client_sessions: int
    idle_seconds: float
    stalled: int
    fairness_bytes: int
    fairness_timeout: float
    dial_concurrency: int
    register_concurrency: int
    connect_timeout: float
    restart_timeout: float
    only: frozenset[str]
    work_dir: Path | None


class Bench:
    """One run: the issuer, the relay, the workers, the figures."""

    def __init__(self, opts: Options, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.idp = SandboxIdp(work / "idp")
        self.relay: RelayProcess | None = None
        self.workers: Workers | None = None
        self.http: aiohttp.ClientSession | None = None
        self.clusters: list[str] = []
        self.admin_token = ""
        self.result: dict[str, Any] = {"agents_requested": opts.agents, "workers": opts.workers,
                                       "registration": "management API: one PUT per cluster as an admin",
                                       "relay_gauge_missing": False}

    # -- set-up ------------------------------------------------------------------------
    async def start(self) -> None:
        # Other processes on the machine slow every phase: say how busy it was.
        self.result["load_average_start"] = round(os.getloadavg()[0], 2)
        self.result["fd_limit"] = raise_fd_limit()
        await self.idp.start()
        self.admin_token = self.idp.mint("admin", lifetime=4 * 3600)
        admin_oid = str(jwt.decode(self.admin_token, options={"verify_signature": False})["oid"])
        self.relay = RelayProcess(self.work, self.idp.issuer, str(self.idp.ca_file), (admin_oid,))
        await self.relay.start()
        ssl_ctx = client_ssl_context(self.relay.ca_file.read_bytes())
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=self.opts.register_concurrency, ssl=ssl_ctx))
        say(f"relay pid={self.relay.pid} {self.relay.url}")

    def claim(self, user: str, name: str) -> str:
        token = self.idp.mint(user)
        return str(jwt.decode(token, options={"verify_signature": False})[name])

    async def api(self, method: str, path: str, body: Any = None) -> int:
        assert self.http is not None and self.relay is not None
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with self.http.request(method, self.relay.url + path, json=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def register(self) -> list[tuple[str, str]]:
        """Key pairs, clusters and user roles; returns (cluster id, key PEM)."""
        n = self.opts.agents
        t0 = time.monotonic()
        names = [f"c{i:05d}" for i in range(n)]
        keys = [generate_key_pair(f"{RESOURCE_GROUP}/{name}") for name in names]
        self.result["keygen_seconds"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        slots = asyncio.Semaphore(self.opts.register_concurrency)

        async def put(name: str, cert: bytes) -> int:
            async with slots:
                return await self.api("PUT", f"/api/v1/resourceGroups/{RESOURCE_GROUP}/clusters/{name}",
                                      {"agentPublicKeyCertificate": cert.decode()})

        statuses = await asyncio.gather(*(put(nm, k.certificate_pem) for nm, k in zip(names, keys, strict=True)))
        bad = [s for s in statuses if s not in (200, 201)]
        if bad:
            raise RuntimeError(f"{len(bad)} cluster registrations failed (first status {bad[0]})")
        self.result["register_seconds"] = round(time.monotonic() - t0, 2)
        for user in ("demo", "alice", "bob"):
            status = await self.api("PUT", f"/api/v1/roleAssignments/bench-{user}", {
                "principalId": self.claim(user, "oid"), "principalType": "User",
                "role": "cluster-user", "scope": f"/resourceGroups/{RESOURCE_GROUP}"})
            if status not in (200, 201):
                raise RuntimeError(f"role assignment for {user} failed with status {status}")
        self.clusters = [f"{RESOURCE_GROUP}/{name}" for name in names]
        say(f"registered {n} clusters in {self.result['register_seconds']} s "
            f"(keys: {self.result['keygen_seconds']} s)")
        return [(cid, k.private_key_pem.decode()) for cid, k in zip(self.clusters, keys, strict=True)]

    async def agent_sessions(self, http: aiohttp.ClientSession | None = None) -> float | None:
        """The relay's gauge of open agent sessions; None if the relay did not
        answer. Should a relay no longer export the gauge, the workers' count
        stands in (and ``relay_gauge_missing`` says so)."""
        assert self.relay is not None and self.workers is not None
        session = http or self.http
        assert session is not None
        try:
            async with asyncio.timeout(5):
                async with session.get(self.relay.health_url + "/metrics") as resp:
                    value = metric_value(await resp.text(), *AGENT_GAUGE)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if value is None:
            self.result["relay_gauge_missing"] = True
            return float(self.workers.connected)
        return value

    async def wait_all_connected(self, want: int, timeout: float,
                                 http: aiohttp.ClientSession | None = None) -> bool:
        """Until the workers and then the relay count ``want`` agent sessions
        (the relay is asked only then: its /metrics costs CPU being measured)."""
        assert self.workers is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.workers.connected >= want and (await self.agent_sessions(http) or 0) >= want:
                return True
            await asyncio.sleep(0.1)
        return False

    # -- phases ------------------------------------------------------------------------
    async def connect(self, specs: list[tuple[str, str]]) -> None:
        assert self.relay is not None
        self.workers = await Workers.start(self.work, self.relay.url, str(self.relay.ca_file), specs,
                                           self.opts.workers, self.opts.dial_concurrency)
        base = await self.relay.settled_rss_kib()
        self.result["relay_rss_base_kib"] = base
        cpu0, workers_cpu0, t0 = self.relay.cpu_seconds(), self.workers.cpu_seconds(), time.monotonic()
        overflows0 = listen_overflows()
        self.workers.connect()
        done = await self.wait_all_connected(self.opts.agents, self.opts.connect_timeout)
        elapsed = time.monotonic() - t0
        cpu = self.relay.cpu_seconds() - cpu0
        # Either side near 100 % of a core says who limited the connect rate.
        self.result["connect_relay_cpu_percent"] = round(cpu / elapsed * 100, 1)
        self.result["connect_workers_cpu_percent"] = round(
            (self.workers.cpu_seconds() - workers_cpu0) / elapsed * 100, 1)
        self.result["connect_listen_overflows"] = listen_overflows() - overflows0
        connected = int(await self.agent_sessions() or 0)
        self.result["agents_connected"] = connected
        self.result["connect_seconds"] = round(elapsed, 2)
        self.result["connect_cpu_ms_per_agent"] = round(cpu / max(1, connected) * 1000, 3)
        say(f"{connected}/{self.opts.agents} agents connected in {elapsed:.1f} s"
            + ("" if done else f" (timeout; workers: {self.workers.stats()})"))
        if "memory" in self.opts.only:
            rss = await self.relay.settled_rss_kib()
            self.result["relay_rss_agents_kib"] = rss
            self.result["relay_rss_per_agent_kib"] = round((rss - base) / max(1, connected), 2)

    async def idle_cpu(self) -> None:
        assert self.relay is not None
        cpu0, t0 = self.relay.cpu_seconds(), time.monotonic()
        await asyncio.sleep(self.opts.idle_seconds)
        cpu, elapsed = self.relay.cpu_seconds() - cpu0, time.monotonic() - t0
        self.result["idle_seconds"] = round(elapsed, 2)
        self.result["idle_cpu_percent"] = round(cpu / elapsed * 100, 2)

    async def idle_streams(self) -> None:
        assert self.relay is not None and self.http is not None
        clients = ClientSessions(self.http, self.relay.url)
        try:
            sessions = [await clients.open(self.idp.mint("demo"), f"bench-client-{i}")
                        for i in range(self.opts.client_sessions)]
            targets = [cid.encode() for cid in self.clusters[:250]]
            # Warm-up: the first streams allocate what every later one reuses.
            await close_streams(await open_idle_streams(sessions, targets, min(16, self.opts.streams)))
            base = await self.relay.settled_rss_kib()
            streams = await open_idle_streams(sessions, targets, self.opts.streams)
            rss = await self.relay.settled_rss_kib()
            self.result["streams_open"] = len(streams)
            self.result["relay_rss_per_stream_kib"] = round((rss - base) / max(1, len(streams)), 2)
            say(f"{len(streams)}/{self.opts.streams} idle streams: relay RSS +{rss - base} KiB")
            await close_streams(streams)
        finally:
            await clients.close()

    async def fairness(self) -> None:
        assert self.relay is not None and self.http is not None
        opts = self.opts
        target = self.clusters[0].encode()
        clients = ClientSessions(self.http, self.relay.url)
        try:
            live = await clients.open(self.idp.mint("demo"), "bench-live")
            stallers = [await clients.open(self.idp.mint(u), f"bench-stall-{u}") for u in ("alice", "bob")]
            alone = await self.best_download(live, target)
            stalled = [await source_stream(stallers[i % 2], target, 1 << 40) for i in range(opts.stalled)]
            await self.wait_routing_stops()
            with_stalls = await self.best_download(live, target)
            await close_streams(stalled)
        finally:
            await clients.close()
        mib = 1024 * 1024
        self.result["fairness_alone_mib_s"] = round(alone / mib, 1)
        self.result["fairness_stalled_mib_s"] = round(with_stalls / mib, 1)
        self.result["fairness_ratio"] = round(with_stalls / alone, 3) if alone > 0 else 0.0

    async def best_download(self, live: TunnelSession, target: bytes, rounds: int = 2) -> float:
        return max([await timed_download(live, target, self.opts.fairness_bytes, self.opts.fairness_timeout)
                    for _ in range(rounds)])

    async def wait_routing_stops(self, quiet: float = 1.0, timeout: float = 15.0) -> None:
        """Until the relay's routed-byte counter stops growing: the stalled
        readers' windows are full (bounded)."""
        assert self.relay is not None and self.http is not None
        deadline, last, still_since = time.monotonic() + timeout, -1.0, time.monotonic()
        while time.monotonic() < deadline:
            async with self.http.get(self.relay.health_url + "/metrics") as resp:
                routed = metric_value(await resp.text(), "arc_relay_bytes_total",
                                      'direction="agent_to_client"') or 0.0
            if routed != last:
                last, still_since = routed, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                return
            await asyncio.sleep(0.1)

    async def restart(self) -> None:
        assert self.relay is not None and self.workers is not None
        relay = self.relay
        ssl_ctx = client_ssl_context(relay.ca_file.read_bytes())
        # Fresh connections for every poll: the killed relay's pooled ones are dead.
        polls = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx, force_close=True),
                                      trace_configs=[connect_timing()])
        admin = {"Authorization": f"Bearer {self.admin_token}"}
        get_cluster = f"/api/v1/resourceGroups/{self.clusters[0].replace('/', '/clusters/')}"
        pollers = {"readyz": Poller(polls, relay.health_url + "/readyz", {}),
                   "metrics": Poller(polls, relay.health_url + "/metrics", {}),
                   "api": Poller(polls, relay.url + get_cluster, admin)}
        stop = asyncio.Event()
        retry_before = self.workers.total("retry_after")
        try:
            killed, overflows0 = time.monotonic(), listen_overflows()
            relay.kill9()
            say("relay killed (SIGKILL); restarting on the same port and state dir")
            tasks = [asyncio.ensure_future(p.run(stop)) for p in pollers.values()]
            spawned, workers_cpu0 = time.monotonic(), self.workers.cpu_seconds()
            await relay.start()
            serving = time.monotonic()
            # All that were connected before the kill (N unless the connect phase timed out).
            want = int(self.result["agents_connected"])
            done = await self.wait_all_connected(want, self.opts.restart_timeout, polls)
            back = time.monotonic()
            relay_cpu, workers_cpu = relay.cpu_seconds(), self.workers.cpu_seconds() - workers_cpu0
            self.result["restart_listen_overflows"] = listen_overflows() - overflows0
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            await polls.close()
        self.result["restart_all_reconnected"] = done
        self.result["restart_relay_start_seconds"] = round(serving - spawned, 2)
        self.result["restart_reconnect_seconds"] = round(back - spawned, 2)
        self.result["restart_reconnect_from_kill_seconds"] = round(back - killed, 2)
        self.result["restart_relay_cpu_percent"] = round(relay_cpu / (back - spawned) * 100, 1)
        self.result["restart_workers_cpu_percent"] = round(workers_cpu / (back - spawned) * 100, 1)
        self.result["restart_tracebacks"] = relay.tracebacks()
        if self.result["restart_tracebacks"]:
            say(f"tracebacks in {relay.log_files[-1].name}: {relay.traceback_kinds()}")
        self.result["restart_retry_after_seen"] = self.workers.total("retry_after") - retry_before
        for name, poller in pollers.items():
            self.result[f"{name}_worst_ms"] = round(poller.worst * 1000, 1)
        self.result["poll_worst_connect_ms"] = round(max(p.worst_connect for p in pollers.values()) * 1000, 1)
        self.result["poll_failures"] = sum(p.failures for p in pollers.values())
        say(f"all agents back {back - spawned:.1f} s after the restart" if done else
            f"not all agents back after {self.opts.restart_timeout} s (workers: {self.workers.stats()})")

    async def run(self) -> dict[str, Any]:
        await self.start()
        specs = await self.register()
        await self.connect(specs)
        only = self.opts.only
        if "memory" in only:
            await self.idle_cpu()
            await self.idle_streams()
        if "fairness" in only:
            await self.fairness()
        if "restart" in only:
            await self.restart()
        self.result["load_average_end"] = round(os.getloadavg()[0], 2)
        return self.result

    async def close(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        if self.relay is not None:
            self.relay.stop()
        if self.http is not None:
            await self.http.close()
        await self.idp.stop()


def size(text: str) -> int:
    """``64MiB``, ``512KiB``, ``1000`` -> bytes."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * factor)
    return int(lowered)


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=5000, help="simulated agents (default 5000)")
    p.add_argument("--workers", type=int, default=4, help="agent worker processes (default 4)")
    p.add_argument("--streams", type=int, default=2000, help="idle streams for the memory figure")
    p.add_argument("--client-sessions", type=int, default=0,
                   help="client sessions carrying them (default: one per 500 streams)")
    p.add_argument("--idle-seconds", type=float, default=20.0, help="idle CPU window (default 20)")
    p.add_argument("--stalled", type=int, default=8, help="stalled streams in the fairness part")
    p.add_argument("--fairness-bytes", type=size, default=size("64MiB"), help="live download size")
    p.add_argument("--fairness-timeout", type=float, default=10.0, help="bound of one live download")
    p.add_argument("--dial-concurrency", type=int, default=64, help="handshakes in flight per worker")
    p.add_argument("--register-concurrency", type=int, default=16, help="management PUTs in flight")
    p.add_argument("--connect-timeout", type=float, default=0.0, help="default: 120 s + 100 ms per agent")
    p.add_argument("--restart-timeout", type=float, default=0.0, help="default: 120 s + 100 ms per agent")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    p.add_argument("--work-dir", type=Path, help="keep configs and logs here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    only = frozenset(part.strip() for part in args.only.split(",") if part.strip())
    if unknown := only - set(PARTS):
        p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if args.agents < 1 or args.workers < 1 or args.streams < 1:
        p.error("--agents, --workers and --streams must be >= 1")
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        p.error(f"--work-dir {args.work_dir} is not empty; name a new or empty directory")
    default_timeout = 120.0 + 0.1 * args.agents
    return Options(
        agents=args.agents, workers=min(args.workers, args.agents), streams=args.streams,
        client_sessions=args.client_sessions or max(1, math.ceil(args.streams / 500)),
        idle_seconds=args.idle_seconds, stalled=args.stalled, fairness_bytes=args.fairness_bytes,
        fairness_timeout=args.fairness_timeout, dial_concurrency=args.dial_concurrency,
        register_concurrency=args.register_concurrency,
        connect_timeout=args.connect_timeout or default_timeout,
        restart_timeout=args.restart_timeout or default_timeout, only=only, work_dir=args.work_dir)


async def amain(opts: Options) -> dict[str, Any]:
    tune_allocator()
    with contextlib.ExitStack() as stack:
        if opts.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arc-scale-")))
        else:
            work = opts.work_dir.resolve()
            work.mkdir(parents=True, exist_ok=True)
            work.chmod(0o700)  # agent keys and the issuer's signing key go in there
        bench = Bench(opts, work)
        try:
            return await bench.run()
        finally:
            await bench.close()


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        result = asyncio.run(amain(opts))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for whoever runs the bench
        print(f"bench.scale: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(table(result))
    print(json.dumps({key: result.get(key) for key in ALL_KEYS}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
