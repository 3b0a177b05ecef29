"""The simulated agents' worker processes, seen from ``bench.scale``.

Each worker (``python -m bench.scale_agents``) gets a spec file with its share
of the clusters; ``connect()`` tells them all to start; their stdout JSON lines
keep ``stats()`` current; ``stop()`` closes their stdin and waits (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.scale_relay import proc_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 30.0


@dataclass
class Workers:
    procs: list[asyncio.subprocess.Process]
    latest: list[dict[str, int]]
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, work: Path, relay_url: str, ca_file: str, clusters: list[tuple[str, str]],
                    count: int, dial_concurrency: int) -> Workers:
        """Spawn ``count`` workers, the clusters dealt round-robin among them."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        procs = []
        for i in range(count):
            spec = work / f"worker-{i}.json"
            # The spec holds the agents' private keys: owner-only, like a key file.
            fd = os.open(spec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"relay_url": relay_url, "ca_file": ca_file, "dial_concurrency": dial_concurrency,
                           "clusters": clusters[i::count]}, f)
            with open(work / f"worker-{i}.log", "wb") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.scale_agents", "--spec", str(spec),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                    cwd=str(ROOT), env=env))
        workers = cls(procs, [{} for _ in procs])
        workers.readers = [asyncio.ensure_future(workers._read(i)) for i in range(count)]
        return workers

    async def _read(self, i: int) -> None:
        stdout = self.procs[i].stdout
        assert stdout is not None
        while line := await stdout.readline():
            with contextlib.suppress(ValueError):
                self.latest[i] = json.loads(line)

    def connect(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"connect\n")

    def total(self, key: str) -> int:
        return sum(stats.get(key, 0) for stats in self.latest)

    @property
    def connected(self) -> int:
        return self.total("connected")

    def cpu_seconds(self) -> float:
        """CPU time of every worker so far (0 for one that is gone)."""
        total = 0.0
        for proc in self.procs:
            try:
                total += proc_cpu_seconds(proc.pid)
            except OSError:
                pass
        return total

    def stats(self) -> dict[str, int]:
        keys = {k for stats in self.latest for k in stats}
        return {k: self.total(k) for k in sorted(keys)}

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.gather(*self.readers, return_exceptions=True)
