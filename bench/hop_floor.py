"""What one more relay-like hop costs at the least: ``python -m bench.hop_floor``.

``bench.forward`` finds that a forwarded stream (client -> relay B -> relay A
-> agent) takes longer per 64-byte round trip than a local one (client ->
relay A -> agent) and asks whether that can be <= 0.3 ms. This runs the same
two paths as ``bench.floor``'s least-work hops (``bench/floor.py``: blocking
sockets or asyncio, stdlib TLS, no websocket, no tunnel, no multiplexing):

    local:      client -TCP-> A =TLS=> B =TLS=> C -TCP-> echo
    forwarded:  client -TCP-> A =TLS=> B =TLS=> B2 =TLS=> C -TCP-> echo

and measures, alternating blocks in one run, the p50/p99 round trip of a
64-byte message on one connection and the p50 the extra hop adds. That added
figure is a floor for any relay-to-relay hop on this machine: a kernel
loopback send and receive, a TLS record decrypted and encrypted, and a wake-up
of another process, each way. Table on stderr, one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.floor import HOPS, start_floor

MESSAGE = b"m" * 64
EXTRA_HOP = ("B2", "tls", "tls")


def echo_server() -> socket.socket:
    """A blocking TCP echo server on 127.0.0.1 (a thread per connection)."""
    listen = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listen.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listen


def round_trips(sock: socket.socket, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        sock.sendall(MESSAGE)
        got = 0
        while got < len(MESSAGE):
            got += len(sock.recv(len(MESSAGE) - got))
        out.append(time.perf_counter() - started)
    return out


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(io: str, rounds: int, blocks: int) -> dict[str, Any]:
    sink = echo_server()
    procs = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-hop-floor-") as tmp:
            work = Path(tmp)
            sink_port = int(sink.getsockname()[1])
            local_procs, local_port, _ = start_floor(work, sink_port, io=io)
            procs += local_procs
            forwarded_hops = (HOPS[0], EXTRA_HOP, *HOPS[1:])
            forwarded_procs, forwarded_port, _ = start_floor(work, sink_port, io=io, hops=forwarded_hops)
            procs += forwarded_procs
            socks = {"local": connect(local_port), "forwarded": connect(forwarded_port)}
            rtts: dict[str, list[float]] = {"local": [], "forwarded": []}
            for sock in socks.values():
                round_trips(sock, 200)  # warm-up (and every TLS handshake done)
            for _ in range(blocks):
                for label, sock in socks.items():
                    rtts[label] += round_trips(sock, rounds)
            for sock in socks.values():
                sock.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        sink.close()
    result: dict[str, Any] = {"bench": "hop_floor", "io": io, "rounds": rounds * blocks,
                              "loadavg_1m": round(os.getloadavg()[0], 2)}
    for label, values in rtts.items():
        result[f"{label}_rtt_p50_ms"] = round(statistics.median(values) * 1e3, 3)
        result[f"{label}_rtt_p99_ms"] = round(pct(values, 0.99) * 1e3, 3)
    result["added_p50_ms"] = round(result["forwarded_rtt_p50_ms"] - result["local_rtt_p50_ms"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--io", choices=["threads", "asyncio"], default="threads",
                        help="the hops' I/O (bench.floor --io)")
    parser.add_argument("--rounds", type=int, default=1000, help="round trips per block")
    parser.add_argument("--blocks", type=int, default=5, help="alternating local/forwarded blocks")
    args = parser.parse_args()
    r = run(args.io, args.rounds, args.blocks)
    print(f"{'path':<10} {'rtt p50 ms':>10} {'rtt p99 ms':>10}", file=sys.stderr)
    for label in ("local", "forwarded"):
        print(f"{label:<10} {r[f'{label}_rtt_p50_ms']:>10} {r[f'{label}_rtt_p99_ms']:>10}", file=sys.stderr)
    print(f"added by the extra hop (floor, {args.io}): p50 {r['added_p50_ms']} ms (load {r['loadavg_1m']})",
          file=sys.stderr)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
