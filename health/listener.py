"""One daemon's health and metrics listener: ``/livez``, ``/readyz``, ``/metrics``.

Plain HTTP on its own socket (``health.listen``), never TLS and never behind
the public listener's pre-authentication gate or handshake admission: a
reconnect storm that fills those (thousands of TLS handshakes queued) leaves
this path untouched. It runs on the daemon's own event loop on purpose, not in
a thread: ``/livez`` must stop answering when the loop that does the work is
wedged (a thread would report a dead relay alive), and the checks and metric
collectors read state that only the loop may touch. How late the loop runs is
itself bounded by the relay's admission (``admission.max_loop_lag_seconds``).

``/metrics`` is unauthenticated, like every Prometheus target: keep the
listener on loopback or a network only the scraper reaches (docs/metrics.md).

Bounds: at most ``max_connections`` connections at once (beyond: closed at
accept), each closed ``connection_seconds`` after it was accepted (a scraper
reconnects; a peer that never finishes a request cannot hold a slot).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("health")

#: A check: ``None`` when healthy, else one line saying why not.
Check = Callable[[], str | None]

# Probes and scrapes come from a kubelet and a Prometheus or two; 32 leaves
# room for several of each while bounding what a stray client can hold.
DEFAULT_MAX_CONNECTIONS = 32
# A probe or scrape takes milliseconds; kept-alive scrape connections are
# simply re-opened after this.
DEFAULT_CONNECTION_SECONDS = 30.0


@dataclass(frozen=True)
class HealthLimits:
    """Bounds of the health listener.

    Attributes:
        max_connections: Connections held at once; beyond it new ones are
            closed at accept (``health.max_connections``).
        connection_seconds: A connection is closed this long after accept
            (``health.connection_seconds``).
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connection_seconds: float = DEFAULT_CONNECTION_SECONDS

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("health.max_connections must be >= 1")
        if not self.connection_seconds > 0:
            raise ValueError("health.connection_seconds must be > 0")


class _Bounded(asyncio.Protocol):
    """aiohttp's protocol behind a connection count and a lifetime."""

    def __init__(self, owner: HealthListener, inner: asyncio.Protocol) -> None:
        self.owner = owner
        self.inner = inner
        self._counted = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        owner = self.owner
        if owner.open_connections >= owner.limits.max_connections:
            owner.refuse(transport)
            return
        owner.admitted()
        self._counted = True
        # abort, not close: close would wait for a peer that does not read.
        self._timer = asyncio.get_running_loop().call_later(owner.limits.connection_seconds,
                                                            transport.abort)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._counted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self._counted else None

    def pause_writing(self) -> None:
        if self._counted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._counted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self.owner.open_connections -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inner.connection_lost(exc)


def _failures(checks: Mapping[str, Check]) -> tuple[list[str], list[str]]:
    """(report lines, failed names) of running every check once."""
    lines, failed = [], []
    for name, check in checks.items():
        why = check()
        if why is None:
            lines.append(f"[+]{name} ok")
        else:
            lines.append(f"[-]{name} failed: {why}")
            failed.append(name)
    return lines, failed


class HealthListener:
    """Serves ``/livez``, ``/readyz`` and ``/metrics`` of one daemon.

    Call :meth:`start`, read :attr:`port` / :attr:`url`, :meth:`stop` when done.
    ``/livez`` and ``/readyz`` answer 200 ``ok`` when every check passes, else
    503 naming the failed checks; ``?verbose`` lists every check, as the
    Kubernetes API server's own endpoints do.

    Args:
        registry: What ``/metrics`` exposes.
        ready: Readiness checks by name (``/readyz``).
        live: Liveness checks by name (``/livez``); none: the loop answers.
        limits: Connection bounds.
        name: The daemon, for the log line.
        before_metrics: Awaited before each ``/metrics`` encoding (refreshes
            what synchronous collectors read from async sources).
    """

    def __init__(self, registry: CollectorRegistry, ready: Mapping[str, Check], *,
                 live: Mapping[str, Check] | None = None, limits: HealthLimits | None = None,
                 name: str = "daemon",
                 before_metrics: Callable[[], Awaitable[None]] | None = None) -> None:
        self.registry = registry
        self.before_metrics = before_metrics
        self.ready = dict(ready)
        self.live = dict(live or {})
        self.limits = limits or HealthLimits()
        self.name = name
        #: connections held now / closed at accept because of ``max_connections``
        self.open_connections = 0
        self.refused_connections = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._refusing = False  # one log line per burst of refusals, not one per connection

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("health listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("health listener is not started")
        host = str(self._server.sockets[0].getsockname()[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        """Bind ``host:port`` (0: any free port) and serve.

        Raises:
            OSError: the address cannot be bound.
        """
        app = web.Application(client_max_size=1024)
        app.router.add_get("/livez", self._livez, allow_head=False)
        app.router.add_get("/readyz", self._readyz, allow_head=False)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        factory = runner.server
        assert factory is not None  # set by setup()
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Bounded(self, factory()), host, port, reuse_address=True, backlog=64)
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if not _is_loopback(host):
            log.warning("%s health listener on %s:%d is not loopback: /metrics is unauthenticated, "
                        "keep this port off public networks", self.name, host, self.port)
        log.info("%s health listener url=%s", self.name, self.url)

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def admitted(self) -> None:
        """A connection took a slot."""
        self.open_connections += 1
        self._refusing = False

    def refuse(self, transport: asyncio.Transport) -> None:
        """Close a connection beyond ``max_connections`` at accept."""
        self.refused_connections += 1
        if not self._refusing:
            self._refusing = True
            log.warning("%s health listener refusing new connections: health.max_connections=%d reached",
                        self.name, self.limits.max_connections)
        transport.abort()

    def collector(self, prefix: str) -> ListenerCollector:
        """Its own bounds as ``<prefix>_health_connections_*`` (register it on :attr:`registry`)."""
        return ListenerCollector(self, prefix)

    async def _livez(self, request: web.Request) -> web.Response:
        return _report(self.live, request)

    async def _readyz(self, request: web.Request) -> web.Response:
        return _report(self.ready, request)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        if self.before_metrics is not None:
            await self.before_metrics()
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})


class ListenerCollector:
    """A health listener's connection count and refusals, under a daemon's prefix."""

    def __init__(self, listener: HealthListener, prefix: str) -> None:
        self.listener = listener
        self.prefix = prefix

    def collect(self) -> Iterable[Metric]:
        held = GaugeMetricFamily(f"{self.prefix}_health_connections_open",
                                 "Connections held now by the health/metrics listener.")
        held.add_metric([], self.listener.open_connections)
        refused = CounterMetricFamily(f"{self.prefix}_health_connections_refused",
                                      "Health/metrics connections closed at accept: "
                                      "health.max_connections reached.")
        refused.add_metric([], self.listener.refused_connections)
        return (held, refused)


def _report(checks: Mapping[str, Check], request: web.Request) -> web.Response:
    lines, failed = _failures(checks)
    if "verbose" in request.query:
        text = "\n".join([*lines, "ok" if not failed else f"failed: {', '.join(failed)}"]) + "\n"
    else:
        text = "ok\n" if not failed else "".join(f"{line}\n" for line in lines if line.startswith("[-]"))
    return web.Response(status=503 if failed else 200, text=text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
