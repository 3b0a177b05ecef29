"""Relay CPU per agent connect: ``python -m bench.connect_cost``.

Starts ``arc-relay`` as its own process (from this tree, and with
``--baseline-source DIR`` also from another source tree, e.g. the branch
point, alternating round by round), registers ``--agents`` clusters in its
database, then per round:

1. ``--agents`` bare HTTPS requests (a new TLS connection each, ``GET
   /healthz``): the relay CPU of TLS set-up plus one tiny request;
2. ``--agents`` real agents (``agent.connector.Connector``, each with its own
   key, assertion, websocket upgrade and metadata report) connecting
   ``--concurrency`` at a time, then waiting for the write-behind flush.

The relay's CPU (user + system, all threads, from ``/proc/PID/stat``) is read
before and after each phase, so each row is CPU milliseconds per connect.
The ratio connect / bare TLS request is a same-run figure that does not depend
on how loaded the machine is. Prints a table, then one JSON line.
``$BENCH_RELAY_PROFILE=FILE`` runs the relay under cProfile (to see where a
connect's CPU goes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from agent.connector import Connector, ConnectorConfig
from certs import KeyPair, client_ssl_context, generate_key_pair
from relay.registry import Cluster, SqliteDatabase, SqliteRegistry

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# How long after the last connect the relay may still be writing status
# (the write-behind flushes every second by default); counted in the phase.
SETTLE_SECONDS = 1.5
READY_TIMEOUT = 30.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class RelayProcess:
    """``python -m relay.cli`` from a given source tree (None: this one)."""

    def __init__(self, workdir: Path, source: str | None, keys: list[KeyPair]) -> None:
        self.workdir = workdir
        self.source = source
        self.keys = keys
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.ca_pem = b""

    async def start(self) -> None:
        state = self.workdir / "state"
        db = SqliteDatabase(state / "relay.db")
        registry = SqliteRegistry(db)
        for i, keys in enumerate(self.keys):
            registry.put(Cluster(name=f"c{i}", resource_group="bench",
                                 agent_public_key_certificate=keys.certificate_pem.decode()))
        db.close()
        config = self.workdir / "relay.yaml"
        config.write_text(yaml.safe_dump({
            "listen": "127.0.0.1:0", "state_dir": str(state),
            # Admission off: this measures the cost of a connect, not its pacing.
            "admission": {"handshakes_per_second": 0, "max_concurrent_handshakes": 100000},
        }))
        env = dict(os.environ)
        # $BENCH_RELAY_PROFILE=FILE: run the relay under cProfile (written at its exit).
        profile_file = os.environ.get("BENCH_RELAY_PROFILE")
        profile = ["-m", "cProfile", "-o", profile_file] if profile_file else []
        if self.source:
            env["PYTHONPATH"] = self.source + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *profile, "-m", "relay.cli", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), READY_TIMEOUT)).decode()
        if not line.startswith("arc-relay: serving "):
            raise SystemExit(f"relay did not start: {line!r}")
        self.url = line.split()[2]
        self.ca_pem = (state / "tls" / "ca.crt").read_bytes()

    def cpu(self) -> float:
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def bare_tls_requests(relay: RelayProcess, count: int, concurrency: int) -> float:
    """Relay CPU seconds for ``count`` new-connection ``GET /healthz``."""
    ctx = client_ssl_context(relay.ca_pem)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                async with http.get(relay.url + "/healthz") as resp:
                    assert resp.status == 200
                    await resp.read()

    before = relay.cpu()
    await asyncio.gather(*(one() for _ in range(count)))
    return relay.cpu() - before


async def agent_connects(relay: RelayProcess, concurrency: int) -> tuple[float, list[Connector]]:
    """Relay CPU seconds for every agent to connect (and its status to be
    written); returns the connected agents for the caller to stop."""
    gate = asyncio.Semaphore(concurrency)
    agents: list[Connector] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int, keys: KeyPair) -> None:
        async with gate:
            connector = Connector(ConnectorConfig(
                relay_url=relay.url, cluster_id=f"bench/c{i}", private_key_pem=keys.private_key_pem,
                upstream=("127.0.0.1", 9), relay_ca_pem=relay.ca_pem))
            agents.append(connector)
            tasks.append(asyncio.ensure_future(connector.run()))
            if not await connector.wait_connected(READY_TIMEOUT):
                raise SystemExit(f"agent {i} did not connect: {connector.last_error}")

    before = relay.cpu()
    await asyncio.gather(*(one(i, k) for i, k in enumerate(relay.keys)))
    await asyncio.sleep(SETTLE_SECONDS)
    spent = relay.cpu() - before
    for connector in agents:
        await connector.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    return spent, agents


async def measure(label: str, source: str | None, keys: list[KeyPair], concurrency: int,
                  tmp: Path) -> dict[str, float]:
    workdir = tmp / f"{label}-{os.urandom(3).hex()}"
    workdir.mkdir()
    relay = RelayProcess(workdir, source, keys)
    await relay.start()
    try:
        tls = await bare_tls_requests(relay, len(keys), concurrency)
        connect, _ = await agent_connects(relay, concurrency)
    finally:
        await relay.stop()
    n = len(keys)
    return {"tls_request_ms": 1000 * tls / n, "connect_ms": 1000 * connect / n,
            "connect_per_tls_request": connect / tls if tls else float("nan")}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    keys = [generate_key_pair(f"bench/c{i}") for i in range(args.agents)]
    variants: list[tuple[str, str | None]] = [("this", None)]
    if args.baseline_source:
        variants.append(("baseline", args.baseline_source))
    rows: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
    with tempfile.TemporaryDirectory(prefix="connect-cost-") as tmp:
        for _ in range(args.rounds):
            for label, source in variants:
                rows[label].append(await measure(label, source, keys, args.concurrency, Path(tmp)))
    result: dict[str, Any] = {"bench": "connect_cost", "agents": args.agents,
                              "concurrency": args.concurrency, "rounds": args.rounds}
    print(f"{'relay':10} {'TLS request ms':>15} {'connect ms':>11} {'connect/TLS':>12}   (relay CPU per item, median)")
    for label, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        result[label] = {k: round(v, 3) for k, v in med.items()}
        print(f"{label:10} {med['tls_request_ms']:15.3f} {med['connect_ms']:11.3f} "
              f"{med['connect_per_tls_request']:12.2f}")
    if args.baseline_source:
        result["connect_ms_this_over_baseline"] = round(
            result["this"]["connect_ms"] / result["baseline"]["connect_ms"], 3)
        result["connect_per_tls_this_over_baseline"] = round(
            result["this"]["connect_per_tls_request"] / result["baseline"]["connect_per_tls_request"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200, help="agents (and TLS requests) per phase")
    parser.add_argument("--concurrency", type=int, default=50, help="connects in flight at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each variant once per round)")
    parser.add_argument("--baseline-source", help="another source tree whose relay to measure as well")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
