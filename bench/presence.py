"""Presence in Redis at scale: ``python -m bench.presence [--routes 5000]``.

Starts a real ``redis-server`` on a unix socket in a temp dir, registers
``--routes`` clusters through one ``RedisPresence`` and measures, in the same
run: the first write of them all, a full refresh (what the writer task does
every TTL/3) with its CPU time and the worst event-loop stall it causes, a lookup's latency (p50/p99, Redis) beside ``MemoryPresence``'s,
Redis memory per route, and how long after a ``kill -9`` + restart of
redis-server every route is back. A table on stderr, one JSON line last on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from relay.presence import MemoryPresence, PresenceUnavailable
from relay.presence_redis import RedisPresence

LOOKUPS = 2000


def start_redis(base: Path) -> subprocess.Popen[bytes]:
    """redis-server on ``base/redis.sock``, nothing on disk; returns once it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench.presence: redis-server is not installed (Debian package redis-server)")
    sock = base / "redis.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(base)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        if b"ready to accept connections" in line.lower():
            return proc
    sys.exit("bench.presence: redis-server exited before it was ready")


async def timed_lookups(presence: RedisPresence | MemoryPresence, clusters: list[str]) -> list[float]:
    out = []
    for i in range(LOOKUPS):
        started = time.perf_counter()
        await presence.lookup(clusters[i % len(clusters)])
        out.append(time.perf_counter() - started)
    return out


def quantile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def run(routes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-presence-") as tmp:
        base = Path(tmp)
        server = start_redis(base)
        url = f"unix://{base / 'redis.sock'}"
        raw = aioredis.from_url(url)
        presence = RedisPresence(url, replica_id="relay-0", address="relay-0:8443", ttl_seconds=15.0)
        memory = MemoryPresence("relay-0", "relay-0:8443")
        clusters = [f"rg{i % 50}/cluster-{i}" for i in range(routes)]
        try:
            used_before = (await raw.info("memory"))["used_memory"]
            for i, cid in enumerate(clusters):
                presence.register(cid, 1_000_000 + i)
                memory.register(cid, 1_000_000 + i)
            started = time.perf_counter()
            await presence.flush()
            first_write = time.perf_counter() - started
            used_after = (await raw.info("memory"))["used_memory"]
            stall = 0.0
            refreshing = True

            async def ticker() -> None:  # how late a 1 ms timer runs while the refresh runs
                nonlocal stall
                while refreshing:
                    tick = time.perf_counter()
                    await asyncio.sleep(0.001)
                    stall = max(stall, time.perf_counter() - tick - 0.001)

            ticks = asyncio.create_task(ticker())
            started = time.perf_counter()
            cpu = time.process_time()
            await presence.refresh()
            refresh = time.perf_counter() - started
            refresh_cpu = time.process_time() - cpu
            refreshing = False
            await ticks
            redis_lookups = await timed_lookups(presence, clusters)
            memory_lookups = await timed_lookups(memory, clusters)

            await presence.start()
            server.kill()
            server.wait()
            server = start_redis(base)
            restarted = time.perf_counter()
            while True:
                try:
                    if all(await asyncio.gather(*(presence.lookup(c) for c in clusters[-50:]))) and \
                            await raw.dbsize() >= routes:
                        break
                except PresenceUnavailable:
                    pass
                await asyncio.sleep(0.01)
            back = time.perf_counter() - restarted
        finally:
            await presence.close()
            await raw.aclose()
            server.kill()
            server.wait()
    redis_p50, memory_p50 = statistics.median(redis_lookups), statistics.median(memory_lookups)
    return {
        "routes": routes,
        "first_write_ms": first_write * 1000,
        "full_refresh_ms": refresh * 1000,
        "full_refresh_cpu_ms": refresh_cpu * 1000,
        "refresh_worst_loop_stall_ms": stall * 1000,
        "lookup_p50_us": redis_p50 * 1e6,
        "lookup_p99_us": quantile(redis_lookups, 0.99) * 1e6,
        "memory_lookup_p50_us": memory_p50 * 1e6,
        "lookup_redis_over_memory": redis_p50 / memory_p50,
        "redis_bytes_per_route": (used_after - used_before) / routes,
        "reasserted_after_restart_s": back,
        "refresh_period_s": presence.refresh_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=5000, help="clusters registered (default 5000)")
    args = parser.parse_args()
    result = asyncio.run(run(args.routes))
    for key, value in result.items():
        print(f"{key:30} {value:12.2f}", file=sys.stderr)
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
