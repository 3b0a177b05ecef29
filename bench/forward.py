"""Forwarded vs local streams through two relay replicas: ``python -m bench.forward``.

Starts a real ``redis-server`` (presence) and two relay processes, A and B,
sharing one SQLite file and a peer CA (``relay.peering.issue_peer_files``).
One agent session (in this process; it answers each stream itself: echo, or
sink-and-count) connects to A. Two client sessions: one to A (**local**: client
-> A -> agent) and one to B (**forwarded**: client -> B -> peer link -> A ->
agent). Measured in the same run, alternating local and forwarded blocks:

* round trip of a 64-byte message on one open stream (p50/p99, ms) and the
  hop's added p50 (forwarded - local);
* a short request on a new stream (OPEN, one 64-byte echo, close: what each
  kubectl connection through arc-proxy starts with), p50/p99 (ms); the
  forwarded one includes B's presence lookup;
* one-stream throughput client -> agent (MB/s, 10^6 bytes, median of rounds)
  and the ratio forwarded / local;
* CPU of both relay processes together per MB moved and per round trip
  (ms; less sensitive to the machine's load than the times above);
* CPU per MB of each process (this one, relay A, relay B) and from it the
  throughput ratio CPU alone would allow: on this machine's cores, and with
  a core per process (client, agent and relays each on their own machine).

Prints a table on stderr, then one JSON line (last) on stdout. Issue 16's goals:
added p50 <= 0.3 ms, throughput ratio >= 0.8. Absolute figures depend on the
machine's load (``loadavg_1m``): the agent and clients share this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml

from bench.presence import start_redis
from bench.relay_memory import DEMO_OID, RG, RelayProcess, prepare_state
from certs import client_ssl_context, generate_key_pair
from identity.agent_assertion import sign_agent_assertion
from relay.config import agent_endpoint_url
from relay.peering import issue_peer_files
from relay.presence_redis import presence_key
from sandbox.idp import SandboxIdp
from tunnel import TunnelSession, TunnelStream, ws_connect_kwargs
from tunnel.aio import tune_allocator

COUNT = struct.Struct("!Q")
MESSAGE = b"m" * 64
CHUNK = b"\x00" * (1 << 20)
CLUSTER = f"{RG}/c0"
WAIT = 60.0

__all__ = ["DEMO_OID", "main"]


async def answer(stream: TunnelStream) -> None:
    """The agent's ``on_stream``: first byte ``e`` echoes, ``s`` sinks and
    answers the byte count at EOF."""
    stream.accept()
    with contextlib.suppress(Exception):
        mode = await stream.readexactly(1)
        if mode == b"e":
            while data := await stream.read():
                await stream.write(data)
        else:
            total = 0
            while data := await stream.read():
                total += len(data)
            await stream.write(COUNT.pack(total))
        await stream.write_eof()


async def rtt_block(stream: TunnelStream, rounds: int) -> list[float]:
    """``rounds`` echo round trips of MESSAGE; seconds each."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        await stream.write(MESSAGE)
        got = 0
        while got < len(MESSAGE):
            got += len(await stream.read(len(MESSAGE) - got))
        out.append(time.perf_counter() - started)
    return out


async def request_block(client: TunnelSession, rounds: int) -> list[float]:
    """``rounds`` short requests, each on a new stream; seconds each."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        stream = await client.open_stream(CLUSTER.encode(), timeout=WAIT)
        await stream.write(b"e" + MESSAGE)
        got = 0
        while got < len(MESSAGE):
            got += len(await stream.read(len(MESSAGE) - got))
        out.append(time.perf_counter() - started)
        await stream.aclose()
    return out


async def throughput(client: TunnelSession, megabytes: int) -> float:
    """One stream: send ``megabytes`` MiB to the sink, MB/s until its count came back."""
    stream = await client.open_stream(CLUSTER.encode(), timeout=WAIT)
    started = time.perf_counter()
    await stream.write(b"s")
    for _ in range(megabytes):
        await stream.write(CHUNK)
    await stream.write_eof()
    count: int = COUNT.unpack(await stream.readexactly(COUNT.size))[0]
    elapsed = time.perf_counter() - started
    await stream.aclose()
    assert count == megabytes * len(CHUNK), count
    return count / elapsed / 1e6


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (Linux /proc)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(rtt_rounds: int, blocks: int, megabytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        root = Path(tmp)
        (root / "redis").mkdir()
        redis = start_redis(root / "redis")
        idp = SandboxIdp(root / "idp")
        await idp.start()
        keys = generate_key_pair("bench agent")
        state = root / "relay"
        state.mkdir()
        await prepare_state(state, 1, keys.certificate_pem.decode())
        peers = issue_peer_files(root / "peers", ["relay-a", "relay-b"])
        relays: list[RelayProcess] = []
        sessions: list[tuple[TunnelSession, asyncio.Task[None]]] = []
        http: aiohttp.ClientSession | None = None
        try:
            for name in ("relay-a", "relay-b"):
                peer = peers[name]
                config = root / f"{name}.yaml"
                config.write_text(yaml.safe_dump({
                    "listen": "127.0.0.1:0", "state_dir": str(state),
                    "oidc": {"issuers": [{"issuer": idp.issuer, "ca_file": idp.ca_file}]},
                    "presence": {"redis_url": f"unix://{root / 'redis' / 'redis.sock'}",
                                 "replica_id": name},
                    "peering": {"listen": "127.0.0.1:0", "ca_file": peer.ca_file,
                                "cert_file": peer.cert_file, "key_file": peer.key_file},
                }))
                relays.append(RelayProcess(config, False))  # one at a time: A makes the dev CA
            relay_a, relay_b = relays
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(relay_a.ca_pem)))
            url = agent_endpoint_url(relay_a.url)
            ws = await http.ws_connect(url, headers={"Authorization": "Bearer " + sign_agent_assertion(
                keys.private_key_pem, CLUSTER, url)}, **ws_connect_kwargs())
            agent = TunnelSession(ws, is_client=True, name="agent", on_stream=answer)
            sessions.append((agent, asyncio.ensure_future(agent.run())))
            probe = aioredis.from_url(f"unix://{root / 'redis' / 'redis.sock'}")
            deadline = time.monotonic() + WAIT
            while not await probe.exists(presence_key(CLUSTER)):
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent's route never reached Redis")
                await asyncio.sleep(0.05)
            await probe.aclose()
            clients = {}
            for label, relay in (("local", relay_a), ("forwarded", relay_b)):
                cws = await http.ws_connect(relay.url + "/client/v1/connect",
                                            headers={"Authorization": f"Bearer {idp.mint('demo')}"},
                                            **ws_connect_kwargs())
                client = TunnelSession(cws, is_client=True, name=f"client-{label}")
                sessions.append((client, asyncio.ensure_future(client.run())))
                clients[label] = client
            echo = {}
            for label, client in clients.items():
                stream = await client.open_stream(CLUSTER.encode(), timeout=WAIT)
                await stream.write(b"e")
                await rtt_block(stream, 200)  # warm-up
                echo[label] = stream
            rtts: dict[str, list[float]] = {"local": [], "forwarded": []}
            rates: dict[str, list[float]] = {"local": [], "forwarded": []}
            requests: dict[str, list[float]] = {"local": [], "forwarded": []}
            pids = [relay.proc.pid for relay in relays]
            rtt_cpu: dict[str, float] = {"local": 0.0, "forwarded": 0.0}
            mb_cpu: dict[str, float] = {"local": 0.0, "forwarded": 0.0}
            # CPU per process during the throughput rounds: bench (client and agent), relay A, relay B.
            process_cpu = {label: [0.0, 0.0, 0.0] for label in ("local", "forwarded")}
            processes = [os.getpid(), *pids]
            for _ in range(blocks):
                for label in ("local", "forwarded"):
                    before = cpu_seconds(pids)
                    rtts[label] += await rtt_block(echo[label], rtt_rounds)
                    rtt_cpu[label] += cpu_seconds(pids) - before
                    requests[label] += await request_block(clients[label], max(1, rtt_rounds // 5))
            for label in ("local", "forwarded"):
                await throughput(clients[label], max(1, megabytes // 4))  # warm-up
            for _ in range(blocks):
                for label in ("local", "forwarded"):
                    before = cpu_seconds(pids)
                    each = [cpu_seconds([pid]) for pid in processes]
                    rates[label].append(await throughput(clients[label], megabytes))
                    mb_cpu[label] += cpu_seconds(pids) - before
                    for i, pid in enumerate(processes):
                        process_cpu[label][i] += cpu_seconds([pid]) - each[i]
        finally:
            for session, task in sessions:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(session.close(), 5)
                task.cancel()
            if http is not None:
                await http.close()
            for relay in reversed(relays):
                relay.stop()
            await idp.stop()
            redis.kill()
            redis.wait()
    result: dict[str, Any] = {"bench": "forward", "rtt_rounds": rtt_rounds * blocks, "megabytes": megabytes,
                              "blocks": blocks, "loadavg_1m": round(os.getloadavg()[0], 2)}
    for label in ("local", "forwarded"):
        result[f"{label}_rtt_p50_ms"] = round(pct(rtts[label], 0.5) * 1e3, 3)
        result[f"{label}_rtt_p99_ms"] = round(pct(rtts[label], 0.99) * 1e3, 3)
        result[f"{label}_request_p50_ms"] = round(pct(requests[label], 0.5) * 1e3, 3)
        result[f"{label}_request_p99_ms"] = round(pct(requests[label], 0.99) * 1e3, 3)
        result[f"{label}_mb_s"] = round(statistics.median(rates[label]), 1)
        result[f"{label}_relay_cpu_ms_per_mb"] = round(mb_cpu[label] * 1e3 / (blocks * megabytes * 1.048576), 3)
        result[f"{label}_relay_cpu_us_per_rtt"] = round(rtt_cpu[label] * 1e6 / (blocks * rtt_rounds), 1)
    result["added_p50_ms"] = round(result["forwarded_rtt_p50_ms"] - result["local_rtt_p50_ms"], 3)
    result["added_p99_ms"] = round(result["forwarded_rtt_p99_ms"] - result["local_rtt_p99_ms"], 3)
    result["added_request_p50_ms"] = round(result["forwarded_request_p50_ms"] - result["local_request_p50_ms"], 3)
    result["throughput_ratio"] = round(result["forwarded_mb_s"] / result["local_mb_s"], 3)
    result.update(cpu_bound_ratios(process_cpu, blocks * megabytes * 1.048576))
    return result


def cpu_bound_ratios(process_cpu: dict[str, list[float]], megabytes: float) -> dict[str, Any]:
    """What the throughput ratio would be if CPU were the only bound.

    A stream's MB takes at least max(busiest process, all processes' CPU /
    cores) of wall time. Here the bench process (client and agent together)
    and the relays share this machine's cores; the other prediction gives
    each process a core of its own (as client, agent and each relay have in a
    deployment), so only the busiest process sets the pace."""
    per_mb = {label: [seconds * 1e3 / megabytes for seconds in cpu] for label, cpu in process_cpu.items()}
    cores = os.cpu_count() or 1

    def wall(label: str, cores: int) -> float:
        return max(max(per_mb[label]), sum(per_mb[label]) / cores)

    out: dict[str, Any] = {"cores": cores}
    for label in ("local", "forwarded"):
        bench_ms, relay_a_ms, relay_b_ms = per_mb[label]
        out[f"{label}_cpu_ms_per_mb"] = {"bench": round(bench_ms, 3), "relay_a": round(relay_a_ms, 3),
                                         "relay_b": round(relay_b_ms, 3)}
    out["cpu_bound_ratio_these_cores"] = round(wall("local", cores) / wall("forwarded", cores), 3)
    out["cpu_bound_ratio_core_per_process"] = round(wall("local", 1 << 16) / wall("forwarded", 1 << 16), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rtt-rounds", type=int, default=1000, help="round trips per block")
    parser.add_argument("--blocks", type=int, default=5, help="alternating local/forwarded blocks")
    parser.add_argument("--megabytes", type=int, default=256, help="MiB per throughput round")
    args = parser.parse_args()
    tune_allocator()  # as the daemons do
    r = asyncio.run(run(args.rtt_rounds, args.blocks, args.megabytes))
    print(f"{'path':<10} {'rtt p50 ms':>10} {'rtt p99 ms':>10} {'request p50':>11} {'request p99':>11} "
          f"{'1 stream MB/s':>14} {'relay CPU ms/MB':>15} {'relay CPU us/rtt':>16}", file=sys.stderr)
    for label in ("local", "forwarded"):
        print(f"{label:<10} {r[f'{label}_rtt_p50_ms']:>10} {r[f'{label}_rtt_p99_ms']:>10} "
              f"{r[f'{label}_request_p50_ms']:>11} {r[f'{label}_request_p99_ms']:>11} "
              f"{r[f'{label}_mb_s']:>14} {r[f'{label}_relay_cpu_ms_per_mb']:>15} "
              f"{r[f'{label}_relay_cpu_us_per_rtt']:>16}", file=sys.stderr)
    print(f"added by the hop: rtt p50 {r['added_p50_ms']} ms, p99 {r['added_p99_ms']} ms; new-stream "
          f"request p50 {r['added_request_p50_ms']} ms; throughput "
          f"forwarded/local {r['throughput_ratio']} (load {r['loadavg_1m']})", file=sys.stderr)
    for label in ("local", "forwarded"):
        print(f"{label} CPU ms/MB by process: {r[f'{label}_cpu_ms_per_mb']}", file=sys.stderr)
    print(f"throughput ratio if CPU were the only bound: {r['cpu_bound_ratio_these_cores']} on these "
          f"{r['cores']} cores, {r['cpu_bound_ratio_core_per_process']} with a core per process", file=sys.stderr)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
