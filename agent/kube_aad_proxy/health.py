"""kube-aad-proxy's readiness and metrics (served by arc-agent's health listener).

Ready means the API server answered: the last TLS connection to it, whether
opened for a kubectl request or by a probe, completed its handshake. A
readiness check that finds that knowledge older than ``PROBE_INTERVAL``
starts one probe connection in the background: an idle proxy still knows
within one probe period, a busy one costs the API server no extra
connection, and a proxy nobody asks (no health listener) never probes.

Metrics are ``arc_kube_aad_proxy_*`` (docs/metrics.md); ``code`` is a status
class (``2xx`` ... ``5xx``), never a free-form value.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.kube_aad_proxy.config import KubeAadProxyConfig
from agent.kube_aad_proxy.connection import connect_reason
from agent.kube_aad_proxy.upstream import open_upstream

if TYPE_CHECKING:
    from agent.kube_aad_proxy.proxy import KubeAadProxy

log = logging.getLogger("agent.kube_aad_proxy")

PREFIX = "arc_kube_aad_proxy"
# An idle proxy re-checks its API server this often: a readiness answer at
# most this stale, one TLS handshake per interval at most.
PROBE_INTERVAL = 10.0
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class _Discard:
    """The probe's upstream owner: the probe sends nothing and reads nothing."""

    def upstream_data(self, data: bytes) -> None:
        return None

    def upstream_lost(self, exc: Exception | None) -> None:
        return None

    def upstream_writable(self, writable: bool) -> None:
        return None


class UpstreamHealth:
    """What kube-aad-proxy knows about its API server, and its counters.

    Call :meth:`record` after every upstream connect and :meth:`request_done`
    after every answered request; :meth:`check` answers readiness;
    :meth:`close` when the proxy stops.

    Args:
        config: The proxy's configuration (the API server's address).
        ctx: The proxy's upstream TLS context.
    """

    def __init__(self, config: KubeAadProxyConfig, ctx: ssl.SSLContext) -> None:
        self.config = config
        self.ctx = ctx
        #: None until the first connect; then whether the last one succeeded
        self.upstream_ok: bool | None = None
        self.upstream_error = ""
        self.connects: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._last_connect: float | None = None
        self._probe: asyncio.Task[None] | None = None

    def record(self, ok: bool, reason: str = "") -> None:
        """One upstream connect finished (``reason``: why it failed, one line)."""
        self.upstream_ok = ok
        self.upstream_error = "" if ok else reason
        self.connects["ok" if ok else "failed"] += 1
        self._last_connect = time.monotonic()

    def request_done(self, status: int) -> None:
        """A response (or refusal) with ``status`` went to kubectl."""
        self.requests[f"{min(max(status // 100, 1), 5)}xx"] += 1

    def check(self) -> str | None:
        """Readiness: None when the API server answered last time. When that
        is older than ``PROBE_INTERVAL``, a probe starts in the background
        (at most one at a time) and the next check sees its result."""
        stale = self._last_connect is None or time.monotonic() - self._last_connect >= PROBE_INTERVAL
        if stale and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._probe_once())
        if self.upstream_ok is None:
            return "API server not reached yet"
        return None if self.upstream_ok else f"API server unreachable: {self.upstream_error}"

    async def _probe_once(self) -> None:
        was = self.upstream_ok
        try:
            probe = await open_upstream(self.config, self.ctx, _Discard())
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.record(False, connect_reason(exc))
        else:
            if probe.transport is not None:
                probe.transport.close()
            self.record(True)
        if self.upstream_ok != was:  # one line per change, not per probe
            if self.upstream_ok:
                log.info("upstream probe ok url=%s", self.config.upstream_url)
            else:
                log.warning("upstream probe failed url=%s reason=%s", self.config.upstream_url,
                            self.upstream_error)

    def close(self) -> None:
        """Cancel a probe in flight (proxy stop)."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None


class KubeAadProxyCollector:
    """``arc_kube_aad_proxy_*`` gauges and counters of one proxy."""

    def __init__(self, proxy: KubeAadProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterable[Metric]:
        proxy, health = self.proxy, self.proxy.health
        conns = GaugeMetricFamily(f"{PREFIX}_connections_open", "kubectl connections open.")
        conns.add_metric([], len(proxy.connections))
        held = GaugeMetricFamily(f"{PREFIX}_preauth_connections",
                                 "Connections held before their first request head is complete.")
        held.add_metric([], proxy.preauth.held)
        refused = CounterMetricFamily(f"{PREFIX}_preauth_refused",
                                      "Connections closed at accept: max_preauth_connections reached.")
        refused.add_metric([], proxy.preauth.refused)
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests answered, by status class.",
                                       labels=["code"])
        for code in STATUS_CLASSES:
            requests.add_metric([code], health.requests[code])
        connects = CounterMetricFamily(f"{PREFIX}_upstream_connects",
                                       "TLS connections to the API server (requests and probes), by result.",
                                       labels=["result"])
        for result in ("ok", "failed"):
            connects.add_metric([result], health.connects[result])
        up = GaugeMetricFamily(f"{PREFIX}_upstream_up",
                               "1 when the last connection to the API server succeeded, else 0.")
        up.add_metric([], 1 if health.upstream_ok else 0)
        return (conns, held, refused, requests, connects, up)
