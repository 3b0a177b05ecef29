"""Simulated agents for ``bench.scale``: many agent sessions in one asyncio loop.

A worker process (``python -m bench.scale_agents --spec FILE``) runs one
:class:`SimulatedAgent` per cluster of its spec. Each authenticates exactly as
``arc-agent`` does: a fresh ``identity.sign_agent_assertion`` per dial, a TLS
websocket opened with ``tunnel.ws_connect_kwargs``, a ``tunnel.TunnelSession``,
and the ``control`` stream carrying one metadata line. It redials the way
``agent/connector.py`` does: its ``Backoff`` and constants are imported from
there (``Connector.run`` itself is not reused because it polls every session
every 50-200 ms, which at thousands of sessions per process would cost more
CPU than the relay being measured; one watcher per worker polls them all).
As the connector, a 503 answer's ``Retry-After`` is honoured (the next dial
waits ``retry_after_delay(hint)``: the hint plus the connector's jitter).
One difference, for the simulation's
sake: a worker has at most ``dial_concurrency`` handshakes in flight (64 by
default), so that thousands of client-side TLS handshakes in one process do
not time out for want of CPU that real agents, each on its own machine, have;
the wait for a slot is not counted in the handshake timeout.

Streams the relay opens (target ``kube-aad-proxy``) speak a one-byte bench
protocol instead of being piped upstream: ``H`` holds the stream idle until
the peer ends it; ``S`` + 8-byte big-endian length writes that many zero bytes
then FIN (a source for throughput and for stalled readers).

Control: the worker reads commands on stdin (``connect``; EOF stops it) and
writes JSON lines on stdout (``{"connected": n, "dials": n, ...}``) whenever
its figures change (checked every 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent import connector as agent_connector
from agent.connector import ConnectorConfig
from agent.connector_dial import (
    agent_audience,
    agent_connect_url,
    relay_not_listening,
    relay_ssl_context,
)
from identity import sign_agent_assertion
from tunnel import (
    CONTROL_TARGET,
    UPSTREAM_TARGET,
    Backoff,
    ErrorCode,
    StreamRefused,
    StreamReset,
    TunnelClosed,
    TunnelConfig,
    TunnelSession,
    TunnelStream,
    retry_after_delay,
    retry_after_seconds,
    ws_connect_kwargs,
)
from tunnel.aio import tune_allocator

# The connector's reconnect policy, through its public names; the defaults
# mirror today's values should another branch rename one.
_DEFAULTS = ConnectorConfig(relay_url="https://127.0.0.1", cluster_id="x/y", private_key_pem=b"",
                            upstream=("127.0.0.1", 0))
BACKOFF_INITIAL: float = _DEFAULTS.backoff_initial
BACKOFF_CAP: float = _DEFAULTS.backoff_cap
STABLE_AFTER: float = _DEFAULTS.stable_after
ASSERTION_LIFETIME: int = _DEFAULTS.assertion_lifetime
# The connector's bound of one dial (TCP, TLS, admission queue, upgrade): a
# shorter one would abandon handshakes waiting in the relay's admission queue
# that a real agent waits out (each abandoned one costs the relay a TLS
# handshake and a queue slot for nothing).
DIAL_TIMEOUT: float | None = _DEFAULTS.effective_dial_timeout
FAST_WINDOW: float = getattr(agent_connector, "FAST_WINDOW", 30.0)
FAST_CAP: float = getattr(agent_connector, "FAST_CAP", 0.5)
AUTH_FAILURE_CAP: float = getattr(agent_connector, "AUTH_FAILURE_CAP", 30.0)
CHURN_WINDOW: float = getattr(agent_connector, "CHURN_WINDOW", 3.0)
CHURN_INITIAL: float = getattr(agent_connector, "CHURN_INITIAL", 1.0)
GOAWAY_POLL: float = getattr(agent_connector, "GOAWAY_POLL", 0.05)
STOP_DRAIN: float = getattr(agent_connector, "STOP_DRAIN", 10.0)
# Bench protocol on a relay-opened stream.
HOLD = b"H"
SOURCE = b"S"
SOURCE_CHUNK = bytes(64 * 1024)
REPORT_INTERVAL = 0.1


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class WorkerStats:
    """What a worker reports; ``connected`` counts live, non-draining sessions."""

    connected: int = 0
    dials: int = 0
    refused: int = 0
    unreachable: int = 0
    retry_after: int = 0
    streams_served: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Fleet:
    """What the agents of one worker share: HTTP client, config, stats, stop flag."""

    http: aiohttp.ClientSession
    relay_url: str
    tunnel: TunnelConfig
    dial_slots: asyncio.Semaphore
    stats: WorkerStats = field(default_factory=WorkerStats)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    live: dict[TunnelSession, asyncio.Event] = field(default_factory=dict)
    draining: set[asyncio.Task[None]] = field(default_factory=set)

    async def sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)

    async def watch_goaways(self) -> None:
        """One poller for every session of the worker, every ``GOAWAY_POLL``
        (the connector awaits ``session.wait_goaway_received()`` instead):
        wakes the agents whose session got GOAWAY."""
        while not self.stopping.is_set():
            for session, woken in list(self.live.items()):
                if session.goaway_received and not woken.is_set():
                    woken.set()
            await self.sleep(GOAWAY_POLL)


class SimulatedAgent:
    """One cluster's agent: the connector's dial loop, without an upstream."""

    def __init__(self, fleet: Fleet, cluster_id: str, private_key_pem: bytes) -> None:
        self.fleet = fleet
        self.cluster_id = cluster_id
        self.private_key_pem = private_key_pem
        self.last_refusal = False
        self.last_retry_after: float | None = None
        self.last_not_listening = False

    async def run(self) -> None:
        """Dial, serve, redial (mirrors ``Connector.run``) until the fleet stops."""
        fleet = self.fleet
        loop = asyncio.get_running_loop()
        backoff = Backoff(BACKOFF_INITIAL, BACKOFF_CAP)
        auth_backoff = Backoff(BACKOFF_INITIAL, AUTH_FAILURE_CAP)
        churn_backoff = Backoff(CHURN_INITIAL, AUTH_FAILURE_CAP)
        lost_at: float | None = None
        while not fleet.stopping.is_set():
            session = await self.dial()
            if session is None:
                if self.last_refusal:
                    delay = auth_backoff.next_delay()
                else:
                    recently_lost = lost_at is not None and loop.time() - lost_at < FAST_WINDOW
                    fast = recently_lost and self.last_not_listening
                    delay = backoff.next_delay(FAST_CAP if fast else None)
                if self.last_retry_after is not None:
                    # As the connector: the hint plus its jitter, whatever the backoff says.
                    delay = retry_after_delay(self.last_retry_after)
                await fleet.sleep(delay)
                continue
            auth_backoff.reset()
            started = loop.time()
            ended_by_goaway = await self.serve(session)
            lost_at = loop.time()
            lived = lost_at - started
            if lived >= STABLE_AFTER:
                backoff.reset()
                churn_backoff.reset()
            if not ended_by_goaway:
                await fleet.sleep(backoff.next_delay())
            elif lived < CHURN_WINDOW:
                await fleet.sleep(churn_backoff.next_delay())

    async def dial(self) -> TunnelSession | None:
        """One authenticated websocket upgrade; None (and why, on self) if refused."""
        fleet = self.fleet
        self.last_refusal, self.last_retry_after, self.last_not_listening = False, None, False
        async with fleet.dial_slots:
            if fleet.stopping.is_set():
                return None
            fleet.stats.dials += 1
            token = sign_agent_assertion(self.private_key_pem, cluster_id=self.cluster_id,
                                         audience=agent_audience(fleet.relay_url),
                                         lifetime=ASSERTION_LIFETIME)
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    ws = await fleet.http.ws_connect(
                        agent_connect_url(fleet.relay_url), headers={"Authorization": f"Bearer {token}"},
                        **ws_connect_kwargs(fleet.tunnel))
            except aiohttp.WSServerHandshakeError as exc:
                fleet.stats.refused += 1
                self.last_refusal = exc.status in (401, 403)
                self.last_retry_after = retry_after_seconds(exc.headers)
                if self.last_retry_after is not None:
                    fleet.stats.retry_after += 1
                return None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                fleet.stats.unreachable += 1
                self.last_not_listening = relay_not_listening(exc)
                return None
        return TunnelSession(ws, is_client=True, config=fleet.tunnel, name=f"agent:{self.cluster_id}",
                             on_stream=self.on_stream)

    async def serve(self, session: TunnelSession) -> bool:
        """Run ``session`` until it ends, GOAWAY arrives, or the fleet stops.

        Returns:
            True when the relay sent GOAWAY (the connector redials at once).
        """
        fleet = self.fleet
        goaway = asyncio.Event()
        fleet.live[session] = goaway
        fleet.stats.connected += 1
        run = asyncio.ensure_future(session.run())
        control = asyncio.ensure_future(self.report_metadata(session))
        waiters = [run, asyncio.ensure_future(goaway.wait()), asyncio.ensure_future(fleet.stopping.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fleet.stats.connected -= 1
            del fleet.live[session]
            for waiter in waiters[1:]:
                waiter.cancel()
        if fleet.stopping.is_set() or not run.done():
            # GOAWAY or stop: the old session drains on its own; leave it be,
            # bounded by the session's own timeouts (stop closes it outright).
            if fleet.stopping.is_set():
                await session.close()
                control.cancel()
            else:
                task = asyncio.ensure_future(self.drain(session, run, control))
                fleet.draining.add(task)
                task.add_done_callback(fleet.draining.discard)
        else:
            control.cancel()
        return goaway.is_set() and not fleet.stopping.is_set()

    @staticmethod
    async def drain(session: TunnelSession, run: asyncio.Future[None], control: asyncio.Future[None]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run), STOP_DRAIN)
        control.cancel()
        await session.close()

    async def report_metadata(self, session: TunnelSession) -> None:
        """The control stream: one metadata line, then held open as the agent does."""
        stream: TunnelStream | None = None
        try:
            stream = await session.open_stream(CONTROL_TARGET)
            await stream.write(json.dumps({"agentVersion": "bench-scale"}).encode() + b"\n")
            while await stream.read():
                pass
        except (StreamRefused, StreamReset, TunnelClosed):
            return
        finally:
            if stream is not None:
                await stream.aclose()

    async def on_stream(self, stream: TunnelStream) -> None:
        """Serve a relay-opened stream with the bench protocol (H: hold, S: source)."""
        if stream.target != UPSTREAM_TARGET:
            stream.reject(ErrorCode.NOT_FOUND, "unknown target")
            return
        stream.accept()
        self.fleet.stats.streams_served += 1
        try:
            command = await stream.readexactly(1)
            if command == SOURCE:
                remaining = int.from_bytes(await stream.readexactly(8), "big")
                while remaining > 0:
                    chunk = SOURCE_CHUNK[:remaining]
                    await stream.write(chunk)
                    remaining -= len(chunk)
                await stream.write_eof()
            while await stream.read():
                pass
        except (StreamReset, TunnelClosed, asyncio.IncompleteReadError):
            return


async def report(fleet: Fleet) -> None:
    """A JSON line on stdout whenever the figures change (checked every 100 ms)."""
    last: dict[str, int] = {}
    while True:
        now = fleet.stats.snapshot()
        if now != last:
            sys.stdout.write(json.dumps(now) + "\n")
            sys.stdout.flush()
            last = now
        if fleet.stopping.is_set():
            return
        await fleet.sleep(REPORT_INTERVAL)


async def read_commands(fleet: Fleet, agents: list[SimulatedAgent], tasks: list[asyncio.Task[None]]) -> None:
    """``connect`` starts every agent (``dial_slots`` bounds the handshakes in
    flight); EOF on stdin stops the worker."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"connect" and not tasks:
            for agent in agents:
                tasks.append(asyncio.ensure_future(agent.run()))
    fleet.stopping.set()


async def worker_main(spec: dict[str, Any]) -> None:
    tune_allocator()
    raise_fd_limit()
    ca_pem = Path(spec["ca_file"]).read_bytes()
    connector = aiohttp.TCPConnector(limit=0, ssl=relay_ssl_context(ca_pem, None))
    async with aiohttp.ClientSession(connector=connector) as http:
        fleet = Fleet(http, spec["relay_url"], TunnelConfig(), asyncio.Semaphore(spec["dial_concurrency"]))
        agents = [SimulatedAgent(fleet, cid, key.encode()) for cid, key in spec["clusters"]]
        random.shuffle(agents)
        tasks: list[asyncio.Task[None]] = []
        reporter = asyncio.ensure_future(report(fleet))
        watcher = asyncio.ensure_future(fleet.watch_goaways())
        await read_commands(fleet, agents, tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()
        await asyncio.gather(reporter, watcher, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale_agents")
    parser.add_argument("--spec", required=True, help="JSON: relay_url, ca_file, dial_concurrency, clusters")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(worker_main(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
