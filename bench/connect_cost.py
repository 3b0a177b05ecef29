"""Relay CPU per agent connect: ``python -m bench.connect_cost``.

Starts ``arc-relay`` as its own process (from this tree, and with
``--baseline-source DIR`` also from another source tree, e.g. the branch
point, alternating round by round), registers ``--agents`` clusters in its
database, then per round:

1. ``--agents`` bare HTTPS requests (a new TLS connection each, ``GET
   /healthz``): the relay CPU of TLS set-up plus one tiny request;
2. ``--agents`` real agents (``agent.connector.Connector``, each with its own
   key, assertion, websocket upgrade and metadata report) connecting
   ``--concurrency`` at a time, then waiting for the write-behind flush; a
   probe meanwhile sends ``GET /healthz`` back to back on one kept-alive
   connection.

The relay's CPU (user + system, all threads, from ``/proc/PID/stat``) is read
before and after each phase, so each row is CPU milliseconds per connect. CPU
does not show time the event loop spends blocked in I/O (a synchronous SQLite
commit waits for fsync): the wall time until every agent is connected and the
probe's latency do.
A third, in-process phase times the registry work of a connect on the event
loop: synchronous commits (before) against the write-behind (now), same run;
a fourth the jti replay check with ``--live-jtis`` remembered: a scan of every
entry (before) against the expiry-ordered cache (now); a fifth the floor of a
connect, in process, on this machine: the server CPU of one full TLS handshake
with the relay's own context (its dev certificate, key exchange and settings),
of one assertion check, and of the ECDSA verify inside it (what no code
change on our side removes).
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
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from agent.connector import Connector, ConnectorConfig
from certs import KeyPair, client_ssl_context, generate_key_pair, load_private_key
from identity.agent_assertion import AgentAssertionVerifier, ReplayCache, sign_agent_assertion
from relay.registry import Cluster, SqliteDatabase, SqliteRegistry
from relay.status import LiveStatusRegistry

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
            await registry.put(Cluster(name=f"c{i}", resource_group="bench",
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


async def probe_latencies(relay: RelayProcess, stop: asyncio.Event) -> list[float]:
    """``GET /healthz`` on one kept-alive connection, back to back, until
    ``stop``: how long the relay's event loop makes a cheap request wait."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(relay.ca_pem), limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set():
            started = loop.time()
            async with http.get(relay.url + "/healthz") as resp:
                await resp.read()
            latencies.append(loop.time() - started)
            await asyncio.sleep(0.005)
    return latencies


async def agent_connects(relay: RelayProcess, concurrency: int) -> dict[str, float]:
    """Every agent connects (and its status is written): the relay CPU spent,
    the wall time until all were connected, and /healthz latencies meanwhile."""
    gate = asyncio.Semaphore(concurrency)
    agents: list[Connector] = []
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    async def one(i: int, keys: KeyPair) -> None:
        async with gate:
            connector = Connector(ConnectorConfig(
                relay_url=relay.url, cluster_id=f"bench/c{i}", private_key_pem=keys.private_key_pem,
                upstream=("127.0.0.1", 9), relay_ca_pem=relay.ca_pem))
            agents.append(connector)
            tasks.append(asyncio.ensure_future(connector.run()))
            if not await connector.wait_connected(READY_TIMEOUT):
                raise SystemExit(f"agent {i} did not connect: {connector.last_error}")

    stop = asyncio.Event()
    prober = asyncio.ensure_future(probe_latencies(relay, stop))
    before, started = relay.cpu(), loop.time()
    await asyncio.gather(*(one(i, k) for i, k in enumerate(relay.keys)))
    wall = loop.time() - started
    await asyncio.sleep(SETTLE_SECONDS)
    spent = relay.cpu() - before
    stop.set()
    latencies = sorted(await prober)
    for connector in agents:
        await connector.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"cpu": spent, "wall": wall,
            "probe_p50": latencies[len(latencies) // 2] if latencies else float("nan"),
            "probe_max": latencies[-1] if latencies else float("nan")}


async def registry_loop_time(n: int, tmp: Path) -> dict[str, float]:
    """Milliseconds per connect spent on the registry, same run: through the
    store (look up, commit Connected, commit the metadata report, each awaited
    on the database's worker thread) against ``LiveStatusRegistry`` (look up,
    queue two writes; the batched commit, timed separately)."""
    db = SqliteDatabase(tmp / f"registry-{os.urandom(3).hex()}.db")
    store = SqliteRegistry(db)
    cert = generate_key_pair("bench/r").certificate_pem.decode()
    ids = []
    for i in range(n):
        stored, _ = await store.put(Cluster(name=f"r{i}", resource_group="bench", agent_public_key_certificate=cert))
        ids.append(stored.id)
    metadata = {"agentVersion": "1.0", "kubernetesVersion": "v1.33.0", "totalNodeCount": 3}
    started = time.perf_counter()
    for cid in ids:
        await store.get(cid)
        await store.set_connectivity(cid, "Connected")
        await store.set_metadata(cid, metadata)
    synchronous = time.perf_counter() - started
    live = LiveStatusRegistry(store, lambda cid: False, flush_seconds=3600.0)
    started = time.perf_counter()
    for cid in ids:
        await live.get(cid)
        await live.set_connectivity(cid, "Connected")
        await live.set_metadata(cid, metadata)
    queued = time.perf_counter() - started
    started = time.perf_counter()
    await live.flush()
    flush = time.perf_counter() - started
    db.close()
    return {"sync_ms": 1000 * synchronous / n, "write_behind_ms": 1000 * queued / n,
            "flush_ms": 1000 * flush / n}


def thread_cpu() -> float:
    return time.thread_time()


def tls_handshake_server_ms(rounds: int, tmp: Path) -> float:
    """Server CPU milliseconds of one full TLS handshake with the relay's own
    context (as ``arc-relay`` builds it, dev certificate), against the
    client context agents use; both sides over memory BIOs in this thread,
    only the server's steps timed."""
    from relay.app import _ssl_context
    from relay.config import RelayConfig

    server_ctx, dev = _ssl_context(RelayConfig(state_dir=str(tmp / "tls-floor")))
    assert dev is not None
    client_ctx = client_ssl_context(dev.ca_file.read_bytes())
    spent = 0.0
    for _ in range(rounds):
        s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
        server_done = client_done = False
        while not (server_done and client_done):
            if not client_done:
                try:
                    client.do_handshake()
                    client_done = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            started = thread_cpu()
            if not server_done:
                try:
                    server.do_handshake()
                    server_done = True
                except ssl.SSLWantReadError:
                    pass
            spent += thread_cpu() - started
            c_in.write(s_out.read())
    return 1000 * spent / rounds


def assertion_check_ms(rounds: int) -> dict[str, float]:
    """CPU milliseconds of the relay's assertion check, and of the ECDSA
    P-256 verify inside it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = generate_key_pair("bench/floor")
    audience = "https://127.0.0.1/agent/v1/connect"
    verifier = AgentAssertionVerifier(audience, max_replay_entries=rounds + 1)
    tokens = [sign_agent_assertion(keys.private_key_pem, "bench/floor", audience) for _ in range(rounds)]
    verifier.verify(tokens.pop(), keys.certificate_pem)  # the key parsed once, as the relay caches it
    started = thread_cpu()
    for token in tokens:
        verifier.verify(token, keys.certificate_pem)
    check = (thread_cpu() - started) / len(tokens)
    public_key = x509.load_pem_x509_certificate(keys.certificate_pem).public_key()
    private_key = load_private_key(keys.private_key_pem)
    assert isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(private_key, ec.EllipticCurvePrivateKey)
    signature = private_key.sign(b"x" * 400, ec.ECDSA(hashes.SHA256()))
    started = thread_cpu()
    for _ in range(rounds):
        public_key.verify(signature, b"x" * 400, ec.ECDSA(hashes.SHA256()))
    ecdsa = (thread_cpu() - started) / rounds
    return {"assertion_check_ms": 1000 * check, "ecdsa_verify_ms": 1000 * ecdsa}


def replay_check_ms(live: int, checks: int = 200) -> dict[str, float]:
    """Milliseconds per connect of the jti replay check with ``live`` jtis
    remembered, same run: a scan of every entry (what the verifier did before)
    against ``ReplayCache`` (expiry-ordered heap + set)."""
    now = 1000.0
    seen = {(f"bench/c{i}", uuid.uuid4().hex): now + 100 + i % 100 for i in range(live)}
    started = time.perf_counter()
    for _ in range(checks):
        for key in [k for k, exp in seen.items() if exp + 60 < now]:
            del seen[key]
        seen[("bench/x", uuid.uuid4().hex)] = now + 200
    scan = (time.perf_counter() - started) / checks
    cache = ReplayCache(max_entries=live + checks)
    for i in range(live):
        cache.add((f"bench/c{i}", uuid.uuid4().hex), now + 160 + i % 100, now)
    started = time.perf_counter()
    for _ in range(checks):
        cache.add(("bench/x", uuid.uuid4().hex), now + 260, now)
    ordered = (time.perf_counter() - started) / checks
    return {"scan_ms": 1000 * scan, "expiry_ordered_ms": 1000 * ordered}


async def measure(label: str, source: str | None, keys: list[KeyPair], concurrency: int,
                  tmp: Path) -> dict[str, float]:
    workdir = tmp / f"{label}-{os.urandom(3).hex()}"
    workdir.mkdir()
    relay = RelayProcess(workdir, source, keys)
    await relay.start()
    try:
        tls = await bare_tls_requests(relay, len(keys), concurrency)
        connects = await agent_connects(relay, concurrency)
    finally:
        await relay.stop()
    n = len(keys)
    return {"tls_request_ms": 1000 * tls / n, "connect_ms": 1000 * connects["cpu"] / n,
            "connect_per_tls_request": connects["cpu"] / tls if tls else float("nan"),
            "all_connected_s": connects["wall"], "healthz_p50_ms": 1000 * connects["probe_p50"],
            "healthz_max_ms": 1000 * connects["probe_max"]}


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
    print(f"{'relay':10} {'TLS req ms':>10} {'connect ms':>10} {'conn/TLS':>8} {'all conn s':>10} "
          f"{'healthz p50 ms':>14} {'max ms':>8}   (CPU per item; medians of rounds)")
    for label, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        result[label] = {k: round(v, 3) for k, v in med.items()}
        print(f"{label:10} {med['tls_request_ms']:10.3f} {med['connect_ms']:10.3f} "
              f"{med['connect_per_tls_request']:8.2f} {med['all_connected_s']:10.2f} "
              f"{med['healthz_p50_ms']:14.2f} {med['healthz_max_ms']:8.1f}")
    with tempfile.TemporaryDirectory(prefix="connect-cost-") as tmp:
        registry = [await registry_loop_time(args.agents, Path(tmp)) for _ in range(args.rounds)]
    loop_ms = {k: statistics.median(r[k] for r in registry) for k in registry[0]}
    result["registry_loop_ms_per_connect"] = {k: round(v, 4) for k, v in loop_ms.items()}
    result["registry_write_behind_over_sync"] = round(loop_ms["write_behind_ms"] / loop_ms["sync_ms"], 4)
    print(f"registry work on the event loop per connect: synchronous {loop_ms['sync_ms']:.3f} ms, "
          f"write-behind {loop_ms['write_behind_ms']:.3f} ms (+ {loop_ms['flush_ms']:.3f} ms "
          "per connect on the flush thread)")
    replay = replay_check_ms(args.live_jtis)
    result["replay_check_ms"] = {k: round(v, 4) for k, v in replay.items()}
    result["replay_expiry_ordered_over_scan"] = round(replay["expiry_ordered_ms"] / replay["scan_ms"], 5)
    print(f"replay check with {args.live_jtis} live jtis: scan {replay['scan_ms']:.3f} ms, "
          f"expiry-ordered {replay['expiry_ordered_ms']:.4f} ms per connect")
    with tempfile.TemporaryDirectory(prefix="connect-cost-") as tmp:
        floor = {"tls_handshake_server_ms": tls_handshake_server_ms(300, Path(tmp)), **assertion_check_ms(300)}
    result["floor_ms"] = {k: round(v, 4) for k, v in floor.items()}
    if "this" in result:
        result["floor_share_of_connect"] = round(
            (floor["tls_handshake_server_ms"] + floor["assertion_check_ms"]) / result["this"]["connect_ms"], 3)
    print(f"floor on this machine: TLS handshake (server side) {floor['tls_handshake_server_ms']:.3f} ms, "
          f"assertion check {floor['assertion_check_ms']:.3f} ms (of which ECDSA verify "
          f"{floor['ecdsa_verify_ms']:.3f} ms) per connect")
    if args.baseline_source:
        for key in ("connect_ms", "connect_per_tls_request", "all_connected_s", "healthz_p50_ms"):
            result[f"{key}_this_over_baseline"] = round(result["this"][key] / result["baseline"][key], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200, help="agents (and TLS requests) per phase")
    parser.add_argument("--concurrency", type=int, default=50, help="connects in flight at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each variant once per round)")
    parser.add_argument("--baseline-source", help="another source tree whose relay to measure as well")
    parser.add_argument("--live-jtis", type=int, default=36000,
                        help="jtis remembered for the replay-check phase (200/s x 180 s: a storm's worth)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
