"""The relay under test for ``bench.scale``: one ``arc-relay --config FILE``
process on 127.0.0.1, its figures read from /proc, and latency pollers.

The relay is started from the ``arc-relay`` command next to this Python (the
tree's entry point), falling back to ``python -m relay.cli``. Each start gets
its own log file, so the tracebacks of the restarted process can be counted.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import yaml

# Seconds the relay may take to print its "serving" line (imports, dev TLS).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVING_RE = re.compile(r"arc-relay: serving (https://\S+)")
# The health listener (/readyz, /metrics), logged before the serving line.
HEALTH_RE = re.compile(r"relay health listener url=(http://\S+)")
TRACEBACK = "Traceback (most recent call last)"


def relay_command() -> list[str]:
    """``arc-relay`` of this environment, else the module."""
    exe = Path(sys.executable).parent / "arc-relay"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "relay.cli"]


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (/proc/PID/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace (/proc/net/netstat):
    SYNs dropped because an accept queue was full; the client retransmits
    after 1 s, then 3 s, 7 s... System-wide, so other listeners count too."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    if len(lines) >= 2 and "ListenOverflows" in lines[0]:
        return int(lines[1][lines[0].index("ListenOverflows")])
    return 0


class RelayFailed(Exception):
    """The relay process did not start or died; the message has its log tail."""


@dataclass
class RelayProcess:
    """``arc-relay`` with a config file in ``work``; restartable on its port."""

    work: Path
    issuer: str
    issuer_ca_file: str
    admins: tuple[str, ...]
    port: int = 0
    url: str = ""
    health_port: int = 0
    health_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_files: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ca_file(self) -> Path:
        """The dev CA ``arc-relay`` makes in its state dir (kept across restarts)."""
        return self.work / "relay-state" / "tls" / "ca.crt"

    def _write_config(self) -> Path:
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "health": {"listen": f"127.0.0.1:{self.health_port}"},
            "state_dir": str(self.work / "relay-state"),
            "oidc": {"issuers": [{"issuer": self.issuer, "audiences": ["api://cluster-connect"],
                                  "ca_file": self.issuer_ca_file}]},
            "admins": list(self.admins),
        }
        path = self.work / "relay.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    async def start(self) -> None:
        """Spawn the relay (port 0 the first time, then the same port) and wait
        for its "serving" line.

        Raises:
            RelayFailed: it exited or stayed silent for ``START_TIMEOUT``.
        """
        self.starts += 1
        log_file = self.work / f"relay-{self.starts}.log"
        self.log_files.append(log_file)
        config = self._write_config()
        with open(log_file, "wb") as log:
            self.proc = subprocess.Popen([*relay_command(), "--config", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = log_file.read_text(errors="replace")
            match, health = SERVING_RE.search(text), HEALTH_RE.search(text)
            if match and health:
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                self.health_url = health.group(1)
                self.health_port = int(self.health_url.rsplit(":", 1)[1])
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RelayFailed(f"arc-relay did not start: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        if not self.log_files:
            return ""
        text = self.log_files[-1].read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def tracebacks(self) -> int:
        """Tracebacks in the current process's log."""
        return self.log_files[-1].read_text(errors="replace").count(TRACEBACK) if self.log_files else 0

    def traceback_kinds(self) -> dict[str, int]:
        """The exception types ending the tracebacks of the current log, counted."""
        kinds: dict[str, int] = {}
        lines = self.log_files[-1].read_text(errors="replace").splitlines() if self.log_files else []
        for i, line in enumerate(lines):
            if TRACEBACK not in line:
                continue
            for follow in lines[i + 1:]:
                if follow and not follow[0].isspace():
                    kind = follow.split(":", 1)[0][:80]
                    kinds[kind] = kinds.get(kind, 0) + 1
                    break
        return kinds

    def kill9(self) -> None:
        """SIGKILL, as an OOM kill or a node loss would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM (the relay drains), then SIGKILL if it overstays."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill9()

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    async def settled_rss_kib(self, timeout: float = 15.0) -> int:
        """RSS once two samples 0.5 s apart differ by under 0.5 % (bounded)."""
        deadline = time.monotonic() + timeout
        last = self.rss_kib()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = self.rss_kib()
            if abs(now - last) <= last * 0.005:
                return now
            last = now
        return last


METRIC_LINE = re.compile(r'^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$')


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """One sample of the Prometheus text ``text`` (labels as written, e.g. ``kind="agent"``)."""
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match and match.group(1) == name and (match.group(2) or "") == labels:
            return float(match.group(3))
    return None


def connect_timing() -> aiohttp.TraceConfig:
    """A trace that stores how long each request's new connection (TCP + TLS)
    took under ``"connect"`` in the dict passed as ``trace_request_ctx``."""

    async def started(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
        ctx.connect_started = time.monotonic()

    async def ended(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
        if isinstance(ctx.trace_request_ctx, dict):
            ctx.trace_request_ctx["connect"] = time.monotonic() - ctx.connect_started

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(started)
    trace.on_connection_create_end.append(ended)
    return trace


@dataclass
class Poller:
    """GETs one URL every ``interval`` seconds on fresh connections (as a load
    balancer's health check would); records the worst latency once the relay
    has answered for the first time, and the failures after that. With
    ``connect_timing()`` on the session, ``worst_connect`` is the longest TCP +
    TLS connect among the answered polls (accept queue and handshake, as
    opposed to serving the request)."""

    http: aiohttp.ClientSession
    url: str
    headers: dict[str, str]
    interval: float = 0.1
    # A poll slower than this is recorded as this (ten times the goal).
    timeout: float = 10.0
    worst: float = 0.0
    worst_connect: float = 0.0
    answered: int = 0
    failures: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            ok = False
            timing: dict[str, float] = {}
            try:
                async with asyncio.timeout(self.timeout):
                    async with self.http.get(self.url, headers=self.headers, trace_request_ctx=timing) as resp:
                        await resp.read()
                        ok = resp.status == 200
            except TimeoutError:
                if self.answered:
                    self.failures += 1
                    self.worst = max(self.worst, self.timeout)
            except (aiohttp.ClientError, OSError):
                if self.answered:
                    self.failures += 1
            else:
                if self.answered and not ok:
                    self.failures += 1
                if ok:
                    self.answered += 1
                    self.worst = max(self.worst, time.monotonic() - started)
                    self.worst_connect = max(self.worst_connect, timing.get("connect", 0.0))
            pause = self.interval - (time.monotonic() - started)
            if pause > 0:
                try:
                    await asyncio.wait_for(stop.wait(), pause)
                except TimeoutError:
                    pass
