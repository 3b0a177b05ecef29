"""Throughput and CPU of the relay listener's TLS engines: ``python -m bench.relay_tls``.

The relay's ``RelayListener`` serves an aiohttp app in a child process, once per
engine (``memorybio``: relay/tls_server.py; ``asyncio``: asyncio's TLS
transport), rounds alternating; this process downloads and uploads ``--mib``
MiB over HTTPS. Reports MB/s and the server process's CPU seconds per GB in
each direction, median over rounds, and the memorybio/asyncio ratio of CPU per
GB (same run); a table on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from certs import CertificateAuthority, client_ssl_context, server_ssl_context

BLOCK = 256 * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(engine: str, tls_dir: str) -> None:
    """The server process: prints its port, serves until stdin closes."""
    from aiohttp import web

    from certs import IssuedCertificate
    from relay.edge_limits import EdgeLimits
    from relay.listener import RelayListener
    from tunnel.aio import tune_allocator

    tune_allocator()  # as arc-relay does

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["bytes"])
        resp = web.StreamResponse()
        await resp.prepare(request)
        block = b"x" * BLOCK
        for _ in range(size // BLOCK):
            await resp.write(block)
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        total = 0
        while chunk := await request.content.readany():
            total += len(chunk)
        return web.Response(text=str(total))

    async def run() -> None:
        tls = Path(tls_dir)
        issued = IssuedCertificate((tls / "cert.pem").read_bytes(), (tls / "key.pem").read_bytes(), b"")
        app = web.Application(client_max_size=1 << 40)
        app.router.add_get("/download", download)
        app.router.add_post("/upload", upload)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listener = RelayListener(runner, server_ssl_context(issued), EdgeLimits(tls_engine=engine))
        await listener.start("127.0.0.1", 0)
        print(listener.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        listener.close()
        await runner.cleanup()

    asyncio.run(run())


async def one_round(engine: str, tls_dir: Path, ca_pem: bytes, size: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "bench.relay_tls", "--serve", engine, str(tls_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    port = int(proc.stdout.readline())
    url = f"https://127.0.0.1:{port}"
    out: dict[str, float] = {}
    try:
        connector = aiohttp.TCPConnector(ssl=client_ssl_context(ca_pem))
        async with aiohttp.ClientSession(connector=connector) as http:
            cpu, start = cpu_seconds(proc.pid), time.perf_counter()
            received = 0
            async with http.get(f"{url}/download", params={"bytes": str(size)}) as resp:
                async for chunk in resp.content.iter_any():
                    received += len(chunk)
            assert received == size
            out["down_MBps"] = size / (time.perf_counter() - start) / 1e6
            out["down_cpu_s_per_GB"] = (cpu_seconds(proc.pid) - cpu) / (size / 1e9)

            async def body() -> Any:
                block = b"y" * BLOCK
                for _ in range(size // BLOCK):
                    yield block

            cpu, start = cpu_seconds(proc.pid), time.perf_counter()
            async with http.post(f"{url}/upload", data=body()) as resp:
                assert int(await resp.text()) == size
            out["up_MBps"] = size / (time.perf_counter() - start) / 1e6
            out["up_cpu_s_per_GB"] = (cpu_seconds(proc.pid) - cpu) / (size / 1e9)
    finally:
        proc.stdin.close()
        proc.wait(30)
    return out


async def measure(mib: int, rounds: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="relay-tls-") as tmp:
        ca = CertificateAuthority.create("bench CA")
        issued = ca.issue_server(("localhost",), ("127.0.0.1",))
        (Path(tmp) / "cert.pem").write_bytes(issued.chain_pem)
        (Path(tmp) / "key.pem").write_bytes(issued.private_key_pem)
        samples: dict[str, list[dict[str, float]]] = {"memorybio": [], "asyncio": []}
        for _ in range(rounds):
            for engine in samples:
                samples[engine].append(await one_round(engine, Path(tmp), ca.certificate_pem, mib << 20))
    return {engine: {key: round(statistics.median(s[key] for s in runs), 2) for key in runs[0]}
            for engine, runs in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    results = asyncio.run(measure(args.mib, args.rounds))
    print(f"{'engine':<10} {'down MB/s':>9} {'cpu s/GB':>8} {'up MB/s':>8} {'cpu s/GB':>8}", file=sys.stderr)
    for engine, r in results.items():
        print(f"{engine:<10} {r['down_MBps']:>9} {r['down_cpu_s_per_GB']:>8} {r['up_MBps']:>8} "
              f"{r['up_cpu_s_per_GB']:>8}", file=sys.stderr)
    ratio = {d: round(results["memorybio"][f"{d}_cpu_s_per_GB"] / results["asyncio"][f"{d}_cpu_s_per_GB"], 3)
             for d in ("down", "up")}
    print(json.dumps({"bench": "relay_tls", "mib": args.mib, "rounds": args.rounds, "results": results,
                      "cpu_per_GB_ratio_memorybio_over_asyncio": ratio}))


if __name__ == "__main__":
    main()
