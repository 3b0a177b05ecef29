"""Benchmark of tunnel v1 through the asyncio adapter, against raw TCP.

Run ``python -m bench.tunnel`` (about 30 s). Two processes: this one is the
client; it spawns ``python -m bench.tunnel --peer``, which serves the tunnel
over an aiohttp websocket and a raw asyncio TCP server on 127.0.0.1. Measured
in the same run, both over the tunnel and over raw TCP between the same two
processes:

* bulk throughput of 1 stream and of 8 concurrent streams (MB/s, 10^6 bytes),
  client -> peer, counted by the peer; for 1 stream also the CPU seconds per GB
  of both processes together (less sensitive to machine load than MB/s), and
  the same stream with the core's 16 KiB frames instead of the adapter's 64 KiB;
* round trip of a 64-byte message (echo ping-pong on one stream), p50/p99 and
  CPU microseconds per round trip; tunnel and raw TCP alternate in blocks;
* fairness (tunnel only): throughput of 7 streams while 8 other streams'
  readers are stalled (their senders parked on credit; 4 on the same session,
  4 on a second session to the same peer), divided by the throughput of the
  same 7 streams with no stalled stream (median of alternating rounds).

``--compare-transports`` adds, in the same run, the websocket transport
(``TunnelConfig.transport``): aiohttp on both ends, native on the dialling side
only (tunnel/aio_ws_native.py, the peer still aiohttp), and native on both ends
(the peer's ``serve_websockets``), alternating in rounds against the same peer
process: 1-stream MB/s and CPU s/GB, and the 64-byte round trip; ratios to aiohttp.

Both processes call ``tunnel.aio.tune_allocator()`` first, as the production
entry points should (BENCH_TUNE_MALLOC=0 disables it); BENCH_DURATION sets the
seconds per throughput figure (default 2.5).

Prints a table, then one JSON object on the last line. Goals on the 2-core
reference machine: 1 stream >= 1,000 MB/s, fairness >= 0.9, tunnel RTT p50
<= 1.5x raw TCP. Figures depend on machine load (reported as ``loadavg_1m``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from tunnel import (
    Limits,
    TunnelConfig,
    TunnelSession,
    TunnelStream,
    open_tunnel_websocket,
    server_websocket_response,
    ws_connect_kwargs,
)
from tunnel.aio import NativeWebSocket, UpgradeRequest, serve_websockets, tune_allocator

TRANSPORT_ROUNDS = 3  # alternations of aiohttp / native with --compare-transports
COUNT = struct.Struct("!Q")
CHUNK = b"\x00" * (1 << 20)  # what a bulk sender writes per call (zeros: no compression anywhere)
MESSAGE = b"m" * 64  # the round-trip message
DURATION = float(os.environ.get("BENCH_DURATION", "2.5"))  # seconds per throughput figure
FAIRNESS_ROUNDS = 5  # alternations of "7 alone" / "7 beside 8 stalled"
FAIRNESS_STALLED = 8  # stalled streams per round, half of them on a second session
RTT_ROUNDS = 4000  # round trips per RTT measurement (after warm-up)
RTT_BLOCK = 500  # tunnel and raw TCP alternate in blocks of this many
WARMUP_ROUNDS = 300


# ----------------------------------------------------------------------- peer


async def _peer_stream(stream: TunnelStream) -> None:
    stream.accept()
    if stream.target == b"sink":
        total = 0
        while data := await stream.read(1 << 20):
            total += len(data)
        await stream.write(COUNT.pack(total))
        await stream.write_eof()
    elif stream.target == b"echo":
        while data := await stream.read():
            await stream.write(data)
        await stream.write_eof()
    elif stream.target == b"stall":
        await asyncio.Event().wait()  # never reads; cancelled when the session ends


async def _peer_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    mode = await reader.readexactly(1)
    if mode == b"S":
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        writer.write(COUNT.pack(total))
    else:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    await writer.drain()
    writer.close()


async def _peer_ws(request: web.Request) -> web.StreamResponse:
    ws = server_websocket_response()
    await ws.prepare(request)
    await TunnelSession(ws, is_client=False, name="bench-peer", on_stream=_peer_stream).run()
    return ws


async def _peer_native(ws: NativeWebSocket, request: UpgradeRequest) -> None:
    config = TunnelConfig(transport="native")
    await TunnelSession(ws, is_client=False, config=config, name="bench-peer-native",
                        on_stream=_peer_stream).run()


async def run_peer() -> None:
    """Serve tunnel and raw TCP until stdin closes; print the ports first."""
    app = web.Application()
    app.router.add_get("/tunnel", _peer_ws)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    tcp = await asyncio.start_server(_peer_tcp, "127.0.0.1", 0)
    native = await serve_websockets(_peer_native, "127.0.0.1", 0)
    ws_port = runner.addresses[0][1]
    print(json.dumps({"ws": ws_port, "tcp": tcp.sockets[0].getsockname()[1],
                      "native": native.sockets[0].getsockname()[1]}), flush=True)
    try:
        # stdin reaches EOF when the parent closes it or dies: never outlive it.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    finally:
        tcp.close()
        native.close()
        await runner.cleanup()


# --------------------------------------------------------------------- client


async def _timed_bulk(
    count: int,
    open_one: Callable[
        [], Awaitable[tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[int]]]]
    ],
    duration: float | None = None,
) -> float:
    """Run ``count`` bulk senders for ``duration`` (default DURATION); return
    MB/s counted by the peer."""
    pairs = [await open_one() for _ in range(count)]
    start = time.perf_counter()
    deadline = start + (DURATION if duration is None else duration)

    async def one(
        write: Callable[[bytes], Awaitable[None]], finish: Callable[[], Awaitable[int]]
    ) -> int:
        while time.perf_counter() < deadline:
            await write(CHUNK)
        return await finish()

    totals = await asyncio.gather(*(one(w, f) for w, f in pairs))
    return sum(totals) / (time.perf_counter() - start) / 1e6


def _tunnel_sink(
    session: TunnelSession,
) -> Callable[
    [], Awaitable[tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[int]]]]
]:
    async def open_one() -> tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[int]]]:
        stream = await session.open_stream(b"sink")

        async def finish() -> int:
            await stream.write_eof()
            total: int = COUNT.unpack(await stream.readexactly(COUNT.size))[0]
            await stream.aclose()
            return total

        return stream.write, finish

    return open_one


def _tcp_sink(
    port: int,
) -> Callable[
    [], Awaitable[tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[int]]]]
]:
    async def open_one() -> tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[int]]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"S")

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        async def finish() -> int:
            writer.write_eof()
            total: int = COUNT.unpack(await reader.readexactly(COUNT.size))[0]
            writer.close()
            return total

        return write, finish

    return open_one


Echo = tuple[Callable[[bytes], Awaitable[None]], Callable[[int], Awaitable[bytes]]]


async def _rtt_samples(echo: Echo, rounds: int) -> list[float]:
    """Time ``rounds`` 64-byte echoes; return the round trips in seconds."""
    write, read = echo
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await write(MESSAGE)
        await read(len(MESSAGE))
        samples.append(time.perf_counter() - t0)
    return samples


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


async def _rtts(session: TunnelSession, port: int, peer_pid: int) -> dict[str, float]:
    """64-byte round trips over the tunnel and raw TCP, alternating in blocks
    of RTT_BLOCK so that load changes hit both alike; p50/p99 in us and CPU
    us per round trip (both processes)."""
    stream = await session.open_stream(b"echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"E")

    async def tcp_write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    echoes: dict[str, Echo] = {
        "tunnel": (stream.write, stream.readexactly),
        "raw": (tcp_write, reader.readexactly),
    }
    samples: dict[str, list[float]] = {"tunnel": [], "raw": []}
    cpu_seconds = {"tunnel": 0.0, "raw": 0.0}
    for echo in echoes.values():
        await _rtt_samples(echo, WARMUP_ROUNDS)
    for _ in range(RTT_ROUNDS // RTT_BLOCK):
        for name, echo in echoes.items():
            with _CpuMeter(peer_pid) as cpu:
                samples[name] += await _rtt_samples(echo, RTT_BLOCK)
            cpu_seconds[name] += cpu.seconds
    await stream.write_eof()
    await stream.aclose()
    writer.close()
    r: dict[str, float] = {}
    for name in echoes:
        r[f"{name}_rtt_p50_us"], r[f"{name}_rtt_p99_us"] = _p50_p99(samples[name])
        r[f"{name}_rtt_cpu_us"] = cpu_seconds[name] / len(samples[name]) * 1e6
    return r


async def _fairness(
    session: TunnelSession, second: TunnelSession
) -> tuple[float, float, float]:
    """Return (7 streams alone MB/s, 7 beside FAIRNESS_STALLED stalled MB/s, fairness).

    The stalled streams are spread over ``session`` (where the 7 run) and
    ``second``; each one's sender writes more than any window the peer may
    grant, so it parks on credit with the peer's reader never reading.
    The two cases alternate FAIRNESS_ROUNDS times, DURATION / 3 each, and the
    fairness is the median of the per-round ratios, so that load changes on a
    shared machine hit both sides of a ratio alike.
    """
    alone: list[float] = []
    beside: list[float] = []
    more_than_window = session.config.limits.stream_window // len(CHUNK) + 4
    for _ in range(FAIRNESS_ROUNDS):
        alone.append(await _timed_bulk(7, _tunnel_sink(session), DURATION / 3))
        stalled = [
            await (session if n % 2 else second).open_stream(b"stall")
            for n in range(FAIRNESS_STALLED)
        ]
        fillers = [asyncio.create_task(s.write(CHUNK * more_than_window)) for s in stalled]
        # Parked on credit: the peer's window for each is full.
        while any(s._write_waiter is None for s in stalled):
            await asyncio.sleep(0.01)
        beside.append(await _timed_bulk(7, _tunnel_sink(session), DURATION / 3))
        assert not any(f.done() for f in fillers), "the stalled senders must stay blocked"
        for filler, stream in zip(fillers, stalled, strict=True):
            filler.cancel()
            stream.reset()
    ratio = statistics.median(b / a for a, b in zip(alone, beside, strict=True))
    return statistics.mean(alone), statistics.mean(beside), ratio


async def _small_frames(port: int, http: aiohttp.ClientSession) -> float:
    """1-stream bulk MB/s on a second session sending the core's 16 KiB frames."""
    config = TunnelConfig(limits=Limits())
    ws = await http.ws_connect(f"http://127.0.0.1:{port}/tunnel", **ws_connect_kwargs(config))
    session = TunnelSession(ws, is_client=True, config=config, name="bench-16k")
    runner = asyncio.create_task(session.run())
    try:
        return await _timed_bulk(1, _tunnel_sink(session))
    finally:
        await session.close()
        await runner


async def _transport_session(http: aiohttp.ClientSession, port: int, transport: str) -> TunnelSession:
    config = TunnelConfig(transport=transport)
    ws = await open_tunnel_websocket(http, f"ws://127.0.0.1:{port}/tunnel", headers={}, ssl_context=None,
                                     proxy=None, config=config)
    return TunnelSession(ws, is_client=True, config=config, name=f"bench-{transport}")


# --compare-transports: (name, dialling side's transport, peer port key)
TRANSPORT_VARIANTS = (("aiohttp", "aiohttp", "ws"), ("native", "native", "ws"), ("both", "native", "native"))


async def _compare_transports(http: aiohttp.ClientSession, ports: dict[str, int],
                              peer_pid: int) -> dict[str, float]:
    """aiohttp vs native on the dialling side (peer aiohttp), and native on both
    ends, alternating TRANSPORT_ROUNDS times: medians of 1-stream MB/s, CPU s/GB
    (both processes) and 64-byte RTT p50/p99."""
    names = [name for name, _, _ in TRANSPORT_VARIANTS]
    figures: dict[str, dict[str, list[float]]] = {n: {"MBps": [], "cpu": [], "p50": [], "p99": []} for n in names}
    sessions = {name: await _transport_session(http, ports[key], transport)
                for name, transport, key in TRANSPORT_VARIANTS}
    runners = [asyncio.create_task(s.run()) for s in sessions.values()]
    try:
        for session in sessions.values():
            await _timed_bulk(1, _tunnel_sink(session), duration=0.5)  # warm-up
        for _ in range(TRANSPORT_ROUNDS):
            for name, session in sessions.items():
                with _CpuMeter(peer_pid) as cpu:
                    mbps = await _timed_bulk(1, _tunnel_sink(session))
                figures[name]["MBps"].append(mbps)
                figures[name]["cpu"].append(cpu.per_gb(mbps))
                stream = await session.open_stream(b"echo")
                await _rtt_samples((stream.write, stream.readexactly), WARMUP_ROUNDS)
                p50, p99 = _p50_p99(await _rtt_samples((stream.write, stream.readexactly), RTT_BLOCK * 2))
                figures[name]["p50"].append(p50)
                figures[name]["p99"].append(p99)
                await stream.write_eof()
                await stream.aclose()
    finally:
        for session in sessions.values():
            await session.close()
        await asyncio.gather(*runners)
    r: dict[str, float] = {}
    for name in names:
        for key, values in figures[name].items():
            r[f"{name}_{key}"] = statistics.median(values)
    for name in ("native", "both"):
        r[f"{name}_over_aiohttp_MBps"] = r[f"{name}_MBps"] / r["aiohttp_MBps"]
        r[f"{name}_over_aiohttp_cpu"] = r[f"{name}_cpu"] / r["aiohttp_cpu"]
        r[f"{name}_over_aiohttp_rtt_p50"] = r[f"{name}_p50"] / r["aiohttp_p50"]
    return {f"transport_{k}": v for k, v in r.items()}


async def run_client(compare_transports: bool = False) -> dict[str, float | str]:
    """Spawn the peer, measure everything, return the figures."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.tunnel",
        "--peer",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ports = json.loads(await proc.stdout.readline())
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                f"http://127.0.0.1:{ports['ws']}/tunnel", **ws_connect_kwargs()
            )
            session = TunnelSession(ws, is_client=True, config=TunnelConfig(), name="bench")
            runner = asyncio.create_task(session.run())
            r: dict[str, float | str] = {}
            await _timed_bulk(1, _tunnel_sink(session))  # warm-up (caches, windows)
            with _CpuMeter(proc.pid) as cpu:
                r["tunnel_1_MBps"] = await _timed_bulk(1, _tunnel_sink(session))
            r["tunnel_1_cpu_s_per_GB"] = cpu.per_gb(_f(r["tunnel_1_MBps"]))
            with _CpuMeter(proc.pid) as cpu:
                r["raw_1_MBps"] = await _timed_bulk(1, _tcp_sink(ports["tcp"]))
            r["raw_1_cpu_s_per_GB"] = cpu.per_gb(_f(r["raw_1_MBps"]))
            r["tunnel_1_16k_frames_MBps"] = await _small_frames(ports["ws"], http)
            r["tunnel_8_MBps"] = await _timed_bulk(8, _tunnel_sink(session))
            r["raw_8_MBps"] = await _timed_bulk(8, _tcp_sink(ports["tcp"]))
            r.update(await _rtts(session, ports["tcp"], proc.pid))
            ws2 = await http.ws_connect(
                f"http://127.0.0.1:{ports['ws']}/tunnel", **ws_connect_kwargs()
            )
            second = TunnelSession(ws2, is_client=True, config=TunnelConfig(), name="bench-2")
            runner2 = asyncio.create_task(second.run())
            alone, beside, fairness = await _fairness(session, second)
            r["fair_7_alone_MBps"], r["fair_7_beside_stalled_MBps"] = alone, beside
            r["fair_stalled_streams"] = float(FAIRNESS_STALLED)
            await second.close()
            await runner2
            await session.close()
            await runner
            if compare_transports:
                r.update(await _compare_transports(http, ports, proc.pid))
    finally:
        proc.stdin.close()
        await proc.wait()
    r["ratio_1"] = _f(r["tunnel_1_MBps"]) / _f(r["raw_1_MBps"])
    r["ratio_8"] = _f(r["tunnel_8_MBps"]) / _f(r["raw_8_MBps"])
    r["rtt_ratio_p50"] = _f(r["tunnel_rtt_p50_us"]) / _f(r["raw_rtt_p50_us"])
    r["fairness"] = fairness
    r["loadavg_1m"] = os.getloadavg()[0]
    r["cpus"] = float(os.cpu_count() or 0)
    r["goal_1_stream_1000MBps"] = "met" if _f(r["tunnel_1_MBps"]) >= 1000 else "missed"
    r["goal_fairness_0.9"] = "met" if _f(r["fairness"]) >= 0.9 else "missed"
    r["goal_rtt_1.5x"] = "met" if _f(r["rtt_ratio_p50"]) <= 1.5 else "missed"
    return r


class _CpuMeter:
    """CPU seconds (user+system) used by this process and the peer meanwhile.

    Wall-clock MB/s depends on what else the machine runs; CPU seconds per GB
    moved (both processes together) does much less, so the table shows both.
    """

    def __init__(self, peer_pid: int) -> None:
        self._stat = f"/proc/{peer_pid}/stat"
        self.seconds = 0.0
        self.wall = 0.0

    def _now(self) -> tuple[float, float]:
        ours = time.process_time()
        try:
            with open(self._stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            theirs = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            theirs = 0.0  # not Linux: count our side only
        return ours + theirs, time.perf_counter()

    def __enter__(self) -> _CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.seconds = end[0] - self._start[0]
        self.wall = end[1] - self._start[1]

    def per_gb(self, mb_per_s: float) -> float:
        """CPU seconds per 10^9 bytes at the measured rate."""
        gigabytes = mb_per_s * self.wall / 1e3
        return self.seconds / gigabytes if gigabytes else float("nan")


def _f(value: float | str) -> float:
    assert isinstance(value, float)
    return value


def print_table(r: dict[str, float | str]) -> None:
    """Print the human-readable table."""
    rows = [
        ("bulk, 1 stream (MB/s)", r["tunnel_1_MBps"], r["raw_1_MBps"], r["ratio_1"]),
        ("bulk, 8 streams (MB/s)", r["tunnel_8_MBps"], r["raw_8_MBps"], r["ratio_8"]),
        (
            "64 B round trip p50 (us)",
            r["tunnel_rtt_p50_us"],
            r["raw_rtt_p50_us"],
            r["rtt_ratio_p50"],
        ),
        (
            "64 B round trip p99 (us)",
            r["tunnel_rtt_p99_us"],
            r["raw_rtt_p99_us"],
            _f(r["tunnel_rtt_p99_us"]) / _f(r["raw_rtt_p99_us"]),
        ),
    ]
    print(f"{'':28}{'tunnel':>12}{'raw TCP':>12}{'ratio':>8}")
    for name, tun, raw, ratio in rows:
        print(f"{name:28}{_f(tun):12.1f}{_f(raw):12.1f}{_f(ratio):8.2f}")
    print(
        f"bulk, 1 stream, 16 KiB frames instead of 64 KiB: "
        f"{_f(r['tunnel_1_16k_frames_MBps']):.1f} MB/s"
    )
    print(
        f"CPU s per GB, 1 stream (both processes): tunnel "
        f"{_f(r['tunnel_1_cpu_s_per_GB']):.2f}, raw TCP {_f(r['raw_1_cpu_s_per_GB']):.2f}"
    )
    print(
        f"CPU us per 64 B round trip (both processes): tunnel "
        f"{_f(r['tunnel_rtt_cpu_us']):.1f}, raw TCP {_f(r['raw_rtt_cpu_us']):.1f}"
    )
    print(
        f"fairness: 7 streams beside {FAIRNESS_STALLED} stalled (2 sessions) "
        f"{_f(r['fair_7_beside_stalled_MBps']):.1f}"
        f" MB/s, alone {_f(r['fair_7_alone_MBps']):.1f} MB/s; median ratio of "
        f"{FAIRNESS_ROUNDS} alternating rounds {_f(r['fairness']):.2f}"
    )
    if "transport_native_MBps" in r:
        print(f"websocket transport, median of {TRANSPORT_ROUNDS} alternating rounds: aiohttp both ends; "
              "native dialling side (peer aiohttp); native both ends")
        print(f"  {'':26}{'aiohttp':>10}{'native':>10}{'both':>10}{'native/aio':>12}{'both/aio':>10}")
        for label, key in (("bulk, 1 stream (MB/s)", "MBps"), ("CPU s per GB, 1 stream", "cpu"),
                           ("64 B round trip p50 (us)", "p50"), ("64 B round trip p99 (us)", "p99")):
            a, n, b = (_f(r[f"transport_{v}_{key}"]) for v in ("aiohttp", "native", "both"))
            print(f"  {label:26}{a:10.2f}{n:10.2f}{b:10.2f}{n / a:12.2f}{b / a:10.2f}")
    print(
        f"goals: 1 stream >= 1000 MB/s {r['goal_1_stream_1000MBps']}; fairness >= 0.9 "
        f"{r['goal_fairness_0.9']}; RTT p50 <= 1.5x raw {r['goal_rtt_1.5x']}  "
        f"(load average {_f(r['loadavg_1m']):.2f} on {int(_f(r['cpus']))} CPUs)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.tunnel``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.tunnel", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compare-transports", action="store_true",
                        help="also compare the dialling side's websocket transports (aiohttp vs native)")
    args = parser.parse_args(argv)
    if os.environ.get("BENCH_TUNE_MALLOC", "1") == "1":
        tune_allocator()  # as the production entry points should (see tunnel/aio_alloc.py)
    if args.peer:
        asyncio.run(run_peer())
        return 0
    results = asyncio.run(run_client(args.compare_transports))
    print_table(results)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
