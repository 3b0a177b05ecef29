"""Idle CPU of the accepting side of N tunnel sessions: ``python -m bench.idle_cpu``.

What a relay spends on thousands of idle agents, without the relay's own
work (authentication, database, metrics): one *server* process accepts N
tunnel sessions over TLS websockets on 127.0.0.1 (``TunnelSession``,
``is_client=False``: the relay's side), a few *dialler* processes open them
(``is_client=True``: the agents' side, which pings every ``ping_interval``).
Once all are up, the server's CPU seconds (utime + stime from /proc, not
wall time: the machine may be busy) over ``--seconds`` of idleness give the
figure, with the PINGs it answered meanwhile (CPU per PING: the idle cost
that the diallers' ping rate does not explain) and its RSS per session
(after connect, against before).

``--baseline DIR`` runs the same measurement on another source tree (e.g.
``git archive BASE | tar -x -C DIR``) in the same run, alternating tree by
tree ``--repeat`` times: before/after figures under the same machine load.
Both processes of a run import the tree's ``tunnel`` (``PYTHONPATH``), so the
diallers' pings follow that tree's keepalive too. ``--profile`` prints the
server's top functions (cProfile) over the idle window of each run.

Prints a table, then one JSON line. Options: ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TREE = HERE.parent.parent  # this source tree
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
DIALLERS = 2  # processes opening the sessions (one core each at most)
DIAL_CONCURRENCY = 64  # TLS handshakes in flight per dialler
STEP_TIMEOUT = 600.0  # bound of every wait on a child process


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident set of ``pid`` in KiB (/proc/PID/statm)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB


def raise_fd_limit() -> None:
    """Every session is a socket: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ----------------------------------------------------------------- child roles
# Each role runs as ``python bench/idle_cpu.py --serve|--dial`` with
# PYTHONPATH set to the tree under test, so it imports that tree's tunnel.
# Commands come on stdin, answers go to stdout, one line each.


async def serve(ping_interval: float, certs_dir: Path) -> None:
    """The accepting side: print ``port N``, then answer ``rss``, ``profile``
    and ``stats`` lines until stdin closes."""
    import ssl

    from aiohttp import web

    from tunnel import TunnelConfig, TunnelSession, server_websocket_response

    config = TunnelConfig(ping_interval=ping_interval)
    sessions: set[TunnelSession] = set()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_websocket_response(config)
        await ws.prepare(request)
        session = TunnelSession(ws, is_client=False, config=config, name="idle")
        sessions.add(session)
        try:
            await session.run()
        finally:
            sessions.discard(session)
        return ws

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certs_dir / "server.crt", certs_dir / "server.key")
    app = web.Application()
    app.router.add_get("/tunnel", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls, backlog=4096)
    await site.start()
    print(f"port {runner.addresses[0][1]}", flush=True)
    profiler: cProfile.Profile | None = None
    reader = await _stdin_reader()
    while line := (await reader.readline()).decode().strip():
        if line == "sessions":
            print(f"sessions {len(sessions)}", flush=True)
        elif line == "pings":  # PINGs received so far from the sessions still open
            print(f"pings {sum(s.their_pings for s in sessions)}", flush=True)
        elif line == "profile":
            profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the machine is busy
            profiler.enable()
            print("profiling", flush=True)
        elif line == "stats" and profiler is not None:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(json.dumps({"stats": out.getvalue()}), flush=True)
            profiler = None
    await runner.cleanup()


async def dial(port: int, count: int, ping_interval: float, ca_file: Path) -> None:
    """The dialling side: open ``count`` sessions, print ``ready N``, hold them
    until stdin closes."""
    import ssl

    import aiohttp

    from tunnel import TunnelConfig, TunnelSession, ws_connect_kwargs

    config = TunnelConfig(ping_interval=ping_interval)
    tls = ssl.create_default_context(cafile=str(ca_file))
    gate = asyncio.Semaphore(DIAL_CONCURRENCY)
    runs: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0, ssl=tls)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            async with gate:
                ws = await http.ws_connect(f"https://127.0.0.1:{port}/tunnel", **ws_connect_kwargs(config))
            session = TunnelSession(ws, is_client=True, config=config, name=f"dial-{i}")
            runs.append(asyncio.create_task(session.run()))

        await asyncio.gather(*(one(i) for i in range(count)))
        print(f"ready {len(runs)}", flush=True)
        reader = await _stdin_reader()
        while await reader.readline():
            pass
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def _stdin_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# ------------------------------------------------------------------ the driver


class Child:
    """One role process of one tree, talked to line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, tree: Path, *args: str) -> Child:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), *args, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(STEP_TIMEOUT):
            text = (await self.proc.stdout.readline()).decode().strip()
        if not text:
            raise RuntimeError(f"child {self.proc.pid} exited (rc {await self.proc.wait()})")
        return text

    async def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.line()

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(30):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def one_run(tree: Path, opts: argparse.Namespace, certs_dir: Path) -> dict[str, Any]:
    """Server and diallers of ``tree``: connect, idle ``opts.seconds``, measure."""
    server = await Child.start(tree, "--serve", "--ping-interval", str(opts.ping_interval),
                               "--certs", str(certs_dir))
    diallers: list[Child] = []
    try:
        port = int((await server.line()).split()[1])
        pid = server.proc.pid
        rss0 = rss_kib(pid)
        shares = [opts.sessions // DIALLERS + (i < opts.sessions % DIALLERS) for i in range(DIALLERS)]
        t0 = time.monotonic()
        for share in shares:
            diallers.append(await Child.start(tree, "--dial", "--port", str(port), "--count", str(share),
                                              "--ping-interval", str(opts.ping_interval),
                                              "--certs", str(certs_dir)))
        ready = 0
        for dialler in diallers:
            ready += int((await dialler.line()).split()[1])
        connect_seconds = time.monotonic() - t0
        held = int((await server.ask("sessions")).split()[1])
        rss1 = rss_kib(pid)
        if opts.profile:
            await server.ask("profile")
        pings0 = int((await server.ask("pings")).split()[1])
        cpu0, w0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(opts.seconds)
        cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - w0
        pings = int((await server.ask("pings")).split()[1]) - pings0
        if opts.profile:
            print(json.loads(await server.ask("stats"))["stats"], file=sys.stderr)
        still = int((await server.ask("sessions")).split()[1])
        return {"tree": str(tree), "sessions": ready, "held": held, "held_after": still,
                "connect_s": round(connect_seconds, 1), "idle_s": round(wall, 1),
                "cpu_s": round(cpu, 2), "cpu_percent": round(cpu / wall * 100, 2),
                "pings": pings, "cpu_us_per_ping": round(cpu / max(1, pings) * 1e6, 1),
                "rss_kib_per_session": round((rss1 - rss0) / max(1, held), 2),
                "loadavg_1m": round(os.getloadavg()[0], 2)}
    finally:
        for child in diallers:
            await child.stop()
        await server.stop()


def write_certs(directory: Path) -> None:
    """A CA and a serving certificate for 127.0.0.1 (the diallers trust the CA)."""
    from certs.authority import CertificateAuthority
    from certs.tls import write_pem_pair

    ca = CertificateAuthority.create("bench-idle-cpu-ca")
    write_pem_pair(directory, "server", ca.issue_server())
    (directory / "ca.crt").write_bytes(ca.certificate_pem)


async def drive(opts: argparse.Namespace) -> dict[str, Any]:
    trees = [TREE] + ([opts.baseline.resolve()] if opts.baseline else [])
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-idle-cpu-") as tmp:
        certs_dir = Path(tmp)
        write_certs(certs_dir)
        for i in range(opts.repeat):
            for tree in (trees if i % 2 == 0 else trees[::-1]):
                run = await one_run(tree, opts, certs_dir)
                print(f"bench.idle_cpu: {run}", file=sys.stderr, flush=True)
                runs.append(run)
    result: dict[str, Any] = {"sessions": opts.sessions, "ping_interval": opts.ping_interval,
                              "seconds": opts.seconds, "runs": runs}
    for tree, label in zip(trees, ("current", "baseline"), strict=False):
        mine = [r for r in runs if r["tree"] == str(tree)]
        result[f"{label}_cpu_percent_median"] = statistics.median(r["cpu_percent"] for r in mine)
        result[f"{label}_rss_kib_per_session_median"] = statistics.median(
            r["rss_kib_per_session"] for r in mine)
        result[f"{label}_cpu_us_per_ping_median"] = statistics.median(r["cpu_us_per_ping"] for r in mine)
    if opts.baseline:
        result["cpu_ratio_current_to_baseline"] = round(
            result["current_cpu_percent_median"] / max(1e-9, result["baseline_cpu_percent_median"]), 3)
    return result


def table(result: dict[str, Any]) -> str:
    head = (f"{'tree':<32} {'sessions':>8} {'idle s':>7} {'cpu s':>7} {'cpu %':>7} {'pings':>7} "
            f"{'us/ping':>8} {'KiB/sess':>9} {'load':>6}")
    rows = [head] + [
        f"{r['tree'][-32:]:<32} {r['held']:>8} {r['idle_s']:>7} {r['cpu_s']:>7} {r['cpu_percent']:>7} "
        f"{r['pings']:>7} {r['cpu_us_per_ping']:>8} {r['rss_kib_per_session']:>9} {r['loadavg_1m']:>6}"
        for r in result["runs"]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.idle_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=5000, help="idle sessions (default 5000)")
    p.add_argument("--seconds", type=float, default=60.0, help="idle window per run (default 60)")
    p.add_argument("--repeat", type=int, default=3, help="runs per tree (default 3)")
    p.add_argument("--ping-interval", type=float, default=30.0, help="both sides' ping_interval (default 30)")
    p.add_argument("--baseline", type=Path, help="a second source tree, measured alternately")
    p.add_argument("--profile", action="store_true", help="cProfile of the server's idle window")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dial", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.serve or opts.dial:
        raise_fd_limit()
        if opts.serve:
            asyncio.run(serve(opts.ping_interval, opts.certs))
        else:
            asyncio.run(dial(opts.port, opts.count, opts.ping_interval, opts.certs / "ca.crt"))
        return
    if opts.sessions < 1 or opts.repeat < 1 or opts.seconds <= 0:
        p.error("--sessions and --repeat must be >= 1, --seconds > 0")
    if opts.baseline and not (opts.baseline / "tunnel" / "__init__.py").is_file():
        p.error(f"--baseline {opts.baseline}: no tunnel/ package there")
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        result = asyncio.run(drive(opts))
        print(table(result))
        print(json.dumps(result))


if __name__ == "__main__":
    # Run as a file (the child roles): its own directory, bench/, comes first
    # on sys.path, and bench/tunnel.py would shadow the tunnel package.
    if sys.path and Path(sys.path[0]).resolve() == HERE.parent:
        del sys.path[0]
    main()
