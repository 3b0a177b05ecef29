"""The steady load of ``bench.ha``: short GETs, live watches, forward streams.

* **GETs**: ``--rate`` per second, each a new TCP connection (so a new tunnel
  stream, as each new kubectl connection) to an in-process arc-proxy
  (``RelaySessionKeeper`` + ``LocalListener`` dialling HAProxy), TLS to
  kube-aad-proxy and ``GET /api/v1/namespaces/default/pods`` with the sandbox
  API server's admin token (passed through to the API server, as a
  service-account token is). Each one's start, end and status or error is kept.
* **Watches**: ``?watch=1`` on the configmaps of ``default``; a ticker updates
  one configmap every second directly at the API server, so a live watch sees
  data every second and one without data for ``HANG_SECONDS`` is hung. A watch
  that ends is recorded (time, error text) and opened again.
* **Forward streams**: the sandbox API server has no port-forward (SPDY or
  websocket) client path this bench could drive cheaply, so these are raw
  tunnel streams (client session -> relays -> a real ``Connector`` -> a TCP
  echo server), in rounds of ``ROUND_SECONDS``: data both ways, then FIN,
  the sha256 of what came back compared with what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import time
from dataclasses import dataclass, field

import aiohttp

from client.relay_client import RelaySessionKeeper
from cmdline.errors import CliError
from tunnel import StreamRefused, StreamReset, TunnelClosed, TunnelSession

__all__ = ["Load", "Outcome", "StreamEnd"]

# A watch or forward stream with no data for this long is hung (aborted and counted).
HANG_SECONDS = 10.0
# One forward round moves data for this long, well inside the relays' drain
# grace (10 s), so a rolling restart must never break one.
ROUND_SECONDS = 2.0
CHUNK = 16 * 1024
# A GET gets this long; beyond it, it counts as failed ("timeout").
GET_TIMEOUT = 10.0
# GETs in flight at most (a stalled tier must not pile up unbounded tasks).
MAX_IN_FLIGHT = 200
GET_PATH = "/api/v1/namespaces/default/pods"
WATCH_PATH = "/api/v1/namespaces/default/configmaps?watch=1"
TICK_CONFIGMAP = "bench-ha-tick"


@dataclass
class Outcome:
    """One short GET: monotonic start and end, and ``""`` or why it failed."""

    start: float
    end: float
    error: str
    phase: str = ""


@dataclass
class StreamEnd:
    """A watch or forward stream that ended badly: when, which, the error text,
    and for forwards the client session and agent route it used."""

    at: float
    kind: str
    name: str
    error: str
    hung: bool = False
    session: TunnelSession | None = None
    agent_replica: str | None = None


@dataclass
class Load:
    """The load generators; records what happened.

    Args:
        listener_port: the in-process arc-proxy's local port.
        cluster_ssl: TLS context for kube-aad-proxy (the demo cluster's serving certificate).
        token: the bearer token every GET and watch sends.
        keeper: the client session keeper for forward streams (via HAProxy).
        echo_clusters: clusters whose agent pipes to the TCP echo server.
        holder: the replica holding a cluster's agent now (from Redis), or None.
    """

    listener_port: int
    cluster_ssl: ssl.SSLContext
    token: str
    keeper: RelaySessionKeeper
    echo_clusters: list[str]
    rate: float
    watches: int
    holder_of: dict[str, str] = field(default_factory=dict)
    gets: list[Outcome] = field(default_factory=list)
    ends: list[StreamEnd] = field(default_factory=list)
    watch_events: int = 0
    # Which scenario runs (set by bench/ha_scenarios.py); each GET records it.
    phase: str = "warm-up"
    forward_rounds: int = 0
    forward_bytes: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _http: aiohttp.ClientSession | None = None

    def start(self, tick: aiohttp.ClientSession, tick_url: str, admin_token: str) -> None:
        """Start every generator (and the configmap ticker on ``tick``)."""
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=self.cluster_ssl, force_close=True, limit=0))
        spawn = self._tasks.append
        spawn(asyncio.ensure_future(self._get_loop()))
        spawn(asyncio.ensure_future(self._ticker(tick, tick_url, admin_token)))
        for i in range(self.watches):
            spawn(asyncio.ensure_future(self._watch_loop(f"watch-{i}")))
        for cluster in self.echo_clusters:
            spawn(asyncio.ensure_future(self._forward_loop(cluster)))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # -- short GETs ---------------------------------------------------------------
    async def _get_loop(self) -> None:
        interval = 1.0 / self.rate
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        pending: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stopping.is_set():
            await slots.acquire()
            task = asyncio.ensure_future(self._get(slots))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _get(self, slots: asyncio.Semaphore) -> None:
        assert self._http is not None
        start = time.monotonic()
        phase = self.phase
        error = ""
        try:
            async with asyncio.timeout(GET_TIMEOUT):
                async with self._http.get(f"https://127.0.0.1:{self.listener_port}{GET_PATH}",
                                          headers={"Authorization": f"Bearer {self.token}"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        error = f"HTTP {resp.status}"
        except TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            slots.release()
        self.gets.append(Outcome(start, time.monotonic(), error, phase))

    # -- watches ------------------------------------------------------------------
    async def _ticker(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        """Update one configmap every second at the API server itself."""
        headers = {"Authorization": f"Bearer {token}"}
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": TICK_CONFIGMAP, "namespace": "default"}, "data": {"n": "0"}}
        base = f"{url}/api/v1/namespaces/default/configmaps"
        async with http.post(base, json=body, headers=headers) as resp:
            await resp.read()
        n = 0
        while not self._stopping.is_set():
            n += 1
            body["data"] = {"n": str(n)}
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.put(f"{base}/{TICK_CONFIGMAP}", json=body, headers=headers) as resp:
                    await resp.read()
            await asyncio.sleep(1.0)

    async def _watch_loop(self, name: str) -> None:
        while not self._stopping.is_set():
            error, hung = await self._watch_once()
            if self._stopping.is_set():
                return
            self.ends.append(StreamEnd(time.monotonic(), "watch", name, error, hung))
            await asyncio.sleep(0.2)

    async def _watch_once(self) -> tuple[str, bool]:
        assert self._http is not None
        url = f"https://127.0.0.1:{self.listener_port}{WATCH_PATH}"
        try:
            async with self._http.get(url, headers={"Authorization": f"Bearer {self.token}"},
                                      timeout=aiohttp.ClientTimeout(total=None, sock_read=HANG_SECONDS)) as resp:
                if resp.status != 200:
                    return f"HTTP {resp.status}", False
                async for _line in resp.content:
                    self.watch_events += 1
                return "ended by the server without an error", False
        except TimeoutError:
            return f"no data for {HANG_SECONDS:.0f} s", True
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200], False

    # -- forward streams ------------------------------------------------------------
    async def _forward_loop(self, cluster: str) -> None:
        while not self._stopping.is_set():
            session: TunnelSession | None = None
            agent_replica = self.holder_of.get(cluster)
            try:
                session = await self.keeper.session()
                agent_replica = self.holder_of.get(cluster)
                await self._forward_round(session, cluster)
                self.forward_rounds += 1
                continue
            except TimeoutError:
                error, hung = f"no data for {HANG_SECONDS:.0f} s", True
            except (StreamRefused, StreamReset, TunnelClosed, asyncio.IncompleteReadError,
                    OSError, ValueError, CliError) as exc:  # CliError: the keeper's (relay unreachable)
                error, hung = f"{type(exc).__name__}: {exc}"[:200], False
            if self._stopping.is_set():
                return
            self.ends.append(StreamEnd(time.monotonic(), "forward", cluster, error, hung, session, agent_replica))
            await asyncio.sleep(0.2)

    async def _forward_round(self, session: TunnelSession, cluster: str) -> None:
        """Data both ways for ROUND_SECONDS, FIN, then sha256 of sent == echoed."""
        stream = await session.open_stream(cluster.encode(), timeout=HANG_SECONDS)
        sent, got = hashlib.sha256(), hashlib.sha256()
        sent_n = 0
        loop = asyncio.get_running_loop()
        end_at = loop.time() + ROUND_SECONDS

        async def reader() -> int:
            n = 0
            while True:
                async with asyncio.timeout(HANG_SECONDS):
                    data = await stream.read()
                if not data:
                    return n
                got.update(data)
                n += len(data)
        try:
            reading = asyncio.ensure_future(reader())
            try:
                while loop.time() < end_at:
                    chunk = os.urandom(CHUNK)
                    async with asyncio.timeout(HANG_SECONDS):
                        await stream.write(chunk)
                    sent.update(chunk)
                    sent_n += len(chunk)
                    await asyncio.sleep(0.01)
                await stream.write_eof()
                got_n = await reading
            finally:
                reading.cancel()
            if got.digest() != sent.digest():
                raise ValueError(f"sha256 mismatch: sent {sent_n} bytes, got {got_n} back")
            self.forward_bytes += sent_n + got_n
        finally:
            await stream.aclose()
