"""Cost of one ``/metrics`` scrape of the relay's health listener: ``python -m bench.metrics_scrape``.

An in-process relay with ``--clusters`` registered clusters (none connected:
every one is offline, the worst case for the per-cluster series) is scraped
over HTTP. Reported, in the same run: the median and worst scrape time when
the registered cluster ids are re-read from the database (every
``relay.metrics.CLUSTER_LIST_SECONDS``) and when they are cached, for
``health.max_cluster_series`` at its default (1000) and at ``--clusters``
(every cluster labelled), with the response size. A table on stderr, one JSON
line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp

from certs import generate_key_pair
from relay import Cluster, RelayConfig, RelayServer

RG = "bench"


async def scrape_times(url: str, count: int) -> tuple[list[float], int]:
    """Seconds per GET of ``url`` (one kept-alive connection) and the last body's size."""
    times, size = [], 0
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            started = time.perf_counter()
            async with http.get(url) as resp:
                size = len(await resp.read())
            times.append(time.perf_counter() - started)
    return times, size


async def measure(clusters: int, max_series: int, scrapes: int) -> dict[str, Any]:
    """Scrape times of one relay holding ``clusters`` registrations."""
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayServer(RelayConfig(port=0, state_dir=tmp, max_cluster_series=max_series))
        await relay.start()
        try:
            assert relay.state is not None
            cert = generate_key_pair(f"{RG}/c").certificate_pem.decode()
            for i in range(clusters):
                await relay.state.registry.put(Cluster(name=f"c{i:05d}", resource_group=RG,
                                                 agent_public_key_certificate=cert))
            url = relay.health_url + "/metrics"
            cold = []
            for _ in range(max(3, scrapes // 10)):
                collector_cache_reset(relay)
                times, size = await scrape_times(url, 1)
                cold += times
            warm, size = await scrape_times(url, scrapes)
        finally:
            await relay.stop(drain_seconds=0)
    return {"clusters": clusters, "max_cluster_series": max_series, "bytes": size,
            "cold_median_ms": round(statistics.median(cold) * 1000, 2),
            "cold_max_ms": round(max(cold) * 1000, 2),
            "warm_median_ms": round(statistics.median(warm) * 1000, 2),
            "warm_max_ms": round(max(warm) * 1000, 2)}


def collector_cache_reset(relay: RelayServer) -> None:
    """Make the next scrape re-read the registered clusters (as every
    CLUSTER_LIST_SECONDS in production)."""
    assert relay.state is not None and relay.state.metrics.clusters is not None
    relay.state.metrics.clusters.expire()


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [await measure(args.clusters, 1000, args.scrapes),
            await measure(args.clusters, args.clusters, args.scrapes)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_scrape", description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=5000, help="registered clusters (default 5000)")
    parser.add_argument("--scrapes", type=int, default=50, help="warm scrapes per case (default 50)")
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    print("| clusters | max_cluster_series | bytes | cold median ms | cold max ms | warm median ms | warm max ms |",
          file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['clusters']} | {r['max_cluster_series']} | {r['bytes']} | {r['cold_median_ms']} | "
              f"{r['cold_max_ms']} | {r['warm_median_ms']} | {r['warm_max_ms']} |", file=sys.stderr)
    print(json.dumps({"metrics_scrape": rows}))


if __name__ == "__main__":
    main()
