"""Relay memory per idle agent and per idle stream: ``python -m bench.relay_memory``.

For each TLS engine (``listener.tls_engine``: ``memorybio``, ``asyncio``) in
the same run: start a real relay process, connect one warm-up agent and one
client, read the relay's RSS, connect ``--agents`` idle agents (real TLS
websocket sessions authenticated with signed assertions, as
``agent.connector`` does, all in this process's one loop), read RSS again,
then open ``--streams`` idle routed streams (client -> relay -> agent) and
read RSS once more. Reports KiB per agent and per stream, a table on stderr
and one JSON line on stdout.

``--tracemalloc`` adds a run of the first engine with tracemalloc on in the
relay (one frame) and prints the top 15 allocation sites (file:line) of what
the agents and then the streams added. Goal (issue 11 item 6): <= 64 KiB per
idle agent, <= 4 KiB per idle stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from multidict import CIMultiDict

from certs import client_ssl_context, generate_key_pair
from identity.agent_assertion import sign_agent_assertion
from relay import Cluster, SqliteDatabase, SqliteRegistry
from relay.config import agent_endpoint_url
from relay.roles import RoleAssignment, SqliteRoleStore, group_scope
from sandbox.idp import SandboxIdp
from tunnel import TunnelSession, TunnelStream, ws_connect_kwargs

DEMO_OID = "35233192-fc5d-4d88-83c8-36ab5ca99ad9"  # the sandbox issuer's demo user
RG = "bench"
CONNECT_CONCURRENCY = 64
ADMISSION_RETRIES = 30  # 503 answers one agent's handshake may get before the run fails
WAIT = 120.0


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def prepare_state(state: Path, clusters: int, cert_pem: str) -> None:
    """Register ``clusters`` clusters (one shared agent key) and a cluster-user
    role for the demo user on the resource group, before the relay starts."""
    db = SqliteDatabase(state / "relay.db")
    registry = SqliteRegistry(db)
    for i in range(clusters):
        await registry.put(Cluster(name=f"c{i}", resource_group=RG, agent_public_key_certificate=cert_pem))
    await SqliteRoleStore(db).put(RoleAssignment("bench", DEMO_OID, "User", "cluster-user", group_scope(RG)))
    db.close()


class RelayProcess:
    """``python -m bench.relay_memory --serve CONFIG`` in its own process."""

    def __init__(self, config: Path, trace: bool) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        args = [sys.executable, "-m", "bench.relay_memory", "--serve", str(config)]
        if trace:
            args.append("--trace")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"relay did not start: {line!r}")
        _, self.url, ca_file = line.split()
        self.ca_pem = Path(ca_file).read_bytes()

    def snapshot(self, path: Path) -> tracemalloc.Snapshot:
        """Ask the relay for a tracemalloc snapshot (SIGUSR1) and load it."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        (path.parent / "snapshot-path").write_text(str(path))
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + WAIT
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the dump is written, then renamed into place
        return tracemalloc.Snapshot.load(str(path))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def settled_rss(pid: int) -> int:
    """RSS once it stops moving (the relay finishes what the last connects started)."""
    last = rss_kib(pid)
    for _ in range(50):
        await asyncio.sleep(0.2)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


async def hold(stream: TunnelStream) -> None:
    """An agent's on_stream: accept and keep the stream open, idle (returning
    would close it)."""
    stream.accept()
    with contextlib.suppress(Exception):
        while await stream.read():
            pass


class Fleet:
    """Idle agents and one client, all in this loop."""

    def __init__(self, relay: RelayProcess, key_pem: bytes, idp: SandboxIdp) -> None:
        self.relay = relay
        self.key_pem = key_pem
        self.idp = idp
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(relay.ca_pem), limit=0))
        self.sessions: list[tuple[TunnelSession, asyncio.Task[None]]] = []
        self.streams: list[TunnelStream] = []

    async def agent(self, index: int) -> None:
        url = agent_endpoint_url(self.relay.url)
        for attempt in range(ADMISSION_RETRIES):
            token = sign_agent_assertion(self.key_pem, f"{RG}/c{index}", url)
            try:
                ws = await self.http.ws_connect(url, headers={"Authorization": f"Bearer {token}"},
                                                **ws_connect_kwargs())
                break
            except aiohttp.WSServerHandshakeError as exc:
                # 503: the relay admits handshakes at the rate it finishes
                # them (relay/admission.py); back off as arc-agent does.
                if exc.status != 503 or attempt == ADMISSION_RETRIES - 1:
                    raise
                retry_after = CIMultiDict(exc.headers or ()).get("Retry-After", "1")
                await asyncio.sleep(random.uniform(0, min(float(retry_after), 5.0)))
        session = TunnelSession(ws, is_client=True, name=f"agent{index}", on_stream=hold)
        self.sessions.append((session, asyncio.ensure_future(session.run())))

    async def agents(self, start: int, count: int) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                await self.agent(i)

        await asyncio.gather(*(one(i) for i in range(start, start + count)))

    async def client(self) -> TunnelSession:
        ws = await self.http.ws_connect(self.relay.url + "/client/v1/connect",
                                        headers={"Authorization": f"Bearer {self.idp.mint('demo')}"},
                                        **ws_connect_kwargs())
        session = TunnelSession(ws, is_client=True, name="client")
        self.sessions.append((session, asyncio.ensure_future(session.run())))
        return session

    async def open_streams(self, client: TunnelSession, cluster: int, count: int) -> None:
        for _ in range(count):
            self.streams.append(await client.open_stream(f"{RG}/c{cluster}".encode(), timeout=WAIT))

    async def close(self) -> None:
        for session, task in self.sessions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 5)
            task.cancel()
        await self.http.close()


async def measure(engine: str, agents: int, streams: int, trace: bool) -> dict[str, Any]:
    """One relay process, one engine: KiB per idle agent and per idle stream."""
    with tempfile.TemporaryDirectory(prefix="relay-memory-") as tmp:
        root = Path(tmp)
        idp = SandboxIdp(root / "idp")
        await idp.start()
        keys = generate_key_pair("bench agents")
        (root / "relay").mkdir()
        await prepare_state(root / "relay", agents + 1, keys.certificate_pem.decode())
        config = root / "relay.yaml"
        config.write_text(yaml.safe_dump({
            "listen": "127.0.0.1:0", "state_dir": str(root / "relay"),
            "oidc": {"issuers": [{"issuer": idp.issuer, "ca_file": idp.ca_file}]},
            "listener": {"tls_engine": engine},
            # All the streams are one user's to one cluster: lift the shares
            # (relay/shares.py) above what the run opens.
            "limits": {"max_preauth_connections": CONNECT_CONCURRENCY * 4,
                       "streams_per_principal_per_cluster": streams + 1,
                       "streams_per_client_session": streams + 1},
        }))
        relay = RelayProcess(config, trace)
        fleet = Fleet(relay, keys.private_key_pem, idp)
        result: dict[str, Any] = {"engine": engine, "agents": agents, "streams": streams}
        try:
            await fleet.agent(agents)  # warm-up: code paths, caches, first allocations
            client = await fleet.client()
            await fleet.open_streams(client, agents, 1)
            base = await settled_rss(relay.proc.pid)
            snap0 = relay.snapshot(root / "s0.pickle") if trace else None
            await fleet.agents(0, agents)
            with_agents = await settled_rss(relay.proc.pid)
            snap1 = relay.snapshot(root / "s1.pickle") if trace else None
            await fleet.open_streams(client, agents, streams)
            with_streams = await settled_rss(relay.proc.pid)
            snap2 = relay.snapshot(root / "s2.pickle") if trace else None
            result.update(
                rss_base_kib=base, rss_agents_kib=with_agents, rss_streams_kib=with_streams,
                kib_per_agent=round((with_agents - base) / agents, 1),
                kib_per_stream=round((with_streams - with_agents) / max(1, streams), 2),
            )
            if snap0 is not None and snap1 is not None and snap2 is not None:
                result["top_agents"] = top(snap1, snap0, agents)
                result["top_streams"] = top(snap2, snap1, max(1, streams))
                # What Python objects account for; the rest of the RSS is C
                # (OpenSSL sessions and buffers, allocator overhead).
                result["traced_kib_per_agent"] = traced_kib(snap1, snap0, agents)
                result["traced_kib_per_stream"] = traced_kib(snap2, snap1, max(1, streams))
        finally:
            await fleet.close()
            relay.stop()
            await idp.stop()
        return result


def top(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot, per: int) -> list[dict[str, Any]]:
    """The 15 allocation sites that grew most, in bytes per agent / stream."""
    rows = []
    for stat in after.compare_to(before, "lineno")[:15]:
        frame = stat.traceback[0]
        rows.append({"site": f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}",
                     "bytes_per": round(stat.size_diff / per), "count_per": round(stat.count_diff / per, 2)})
    return rows


def traced_kib(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot, per: int) -> float:
    """Python-allocated KiB added per agent / stream."""
    return round(sum(s.size_diff for s in after.compare_to(before, "filename")) / per / 1024, 2)


def serve(config_path: str, trace: bool) -> None:
    """The relay process: serve until SIGTERM; SIGUSR1 writes a tracemalloc snapshot."""
    from relay.app import RelayServer
    from relay.config import load_relay_config
    from tunnel.aio import tune_allocator

    if trace:
        tracemalloc.start(1)
    tune_allocator()  # as arc-relay does

    async def run() -> None:
        server = RelayServer(load_relay_config(config_path))
        await server.start()
        print(f"serving {server.url} {server.ca_file}", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        def dump() -> None:
            target = Path(Path(config_path).parent / "snapshot-path").read_text()
            tracemalloc.take_snapshot().dump(target + ".tmp")
            os.replace(target + ".tmp", target)

        loop.add_signal_handler(signal.SIGUSR1, dump)
        await stop.wait()
        await server.stop(drain_seconds=0.5)

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--engines", default="memorybio,asyncio")
    parser.add_argument("--tracemalloc", action="store_true", help="also a traced run of the first engine")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.trace)
        return
    engines = args.engines.split(",")
    results = [asyncio.run(measure(engine, args.agents, args.streams, False)) for engine in engines]
    print(f"{'engine':<10} {'agents':>6} {'KiB/agent':>10} {'streams':>7} {'KiB/stream':>10}", file=sys.stderr)
    for r in results:
        print(f"{r['engine']:<10} {r['agents']:>6} {r['kib_per_agent']:>10} {r['streams']:>7} "
              f"{r['kib_per_stream']:>10}", file=sys.stderr)
    out: dict[str, Any] = {"bench": "relay_memory", "results": results}
    if args.tracemalloc:
        traced = asyncio.run(measure(engines[0], args.agents, args.streams, True))
        out["tracemalloc"] = {key: traced[key] for key in (
            "engine", "kib_per_agent", "kib_per_stream", "traced_kib_per_agent", "traced_kib_per_stream",
            "top_agents", "top_streams")}
        print(f"traced run ({engines[0]}): RSS {traced['kib_per_agent']} KiB/agent, of which Python "
              f"{traced['traced_kib_per_agent']}; {traced['kib_per_stream']} KiB/stream, of which "
              f"Python {traced['traced_kib_per_stream']}", file=sys.stderr)
        for title, rows in (("per agent", traced["top_agents"]), ("per stream", traced["top_streams"])):
            print(f"tracemalloc top 15 {title} ({engines[0]}):", file=sys.stderr)
            for row in rows:
                print(f"  {row['bytes_per']:>8} B  {row['count_per']:>6}  {row['site']}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
