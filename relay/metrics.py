"""Prometheus metrics of one relay, served by its health listener (``/metrics``).

Everything is a prometheus_client collector on ONE registry per relay
(``RelayMetrics.registry``; several relays in one process, as in tests, never
collide): instruments the handlers update (sessions, streams, bytes, refusals)
and collectors that read live state at scrape time (the listener's guards,
admission, per-cluster connectivity, the token validator). Names follow one
scheme, ``arc_relay_<what>[_<unit>][_total]``, each listed in docs/metrics.md.

Per-cluster series are bounded: at most ``health.max_cluster_series`` clusters
get their own ``cluster`` label (offline ones first, then by id, so the series
an alert needs are the ones kept); the streams of every other cluster are
summed under ``cluster="_other"`` (a cluster id always holds a ``/``, so it
can never be ``_other``), and ``arc_relay_clusters_unlisted`` says how many
were left out.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from relay.admission import HandshakeAdmission
from relay.edge import EdgeGate

log = logging.getLogger("relay")

__all__ = [
    "OTHER_CLUSTERS",
    "AdmissionCollector",
    "ClusterCollector",
    "EdgeCollector",
    "PresenceCollector",
    "PresenceStats",
    "RelayMetrics",
]

#: The ``cluster`` label of the streams of clusters beyond the series cap.
OTHER_CLUSTERS = "_other"
# Registered cluster ids are read from the database at most this often (one
# scrape every few seconds must not be one full-table read each).
CLUSTER_LIST_SECONDS = 5.0
# Reasons of the listener's slow-loris guards (relay/edge.py), always exposed.
EDGE_CLOSE_REASONS = ("tls handshake timeout", "tls error", "head timeout", "head too large")


class RelayMetrics:
    """The relay's registry and the instruments its handlers update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            "arc_relay_sessions_open", "Open tunnel sessions by kind (agent, client).", ["kind"], registry=r
        )
        self.sessions_total = Counter(
            "arc_relay_sessions_accepted_total", "Tunnel sessions accepted by kind.", ["kind"], registry=r
        )
        self.streams_open = Gauge("arc_relay_streams_open", "Routed streams now open.", registry=r)
        self.streams_total = Counter(
            "arc_relay_streams_total", "Stream OPENs from clients by outcome.", ["outcome"], registry=r
        )
        self.bytes = Counter(
            "arc_relay_bytes_total",
            "DATA bytes routed; direction client_to_agent or agent_to_client.",
            ["direction"],
            registry=r,
        )
        self.open_latency = Histogram(
            "arc_relay_stream_open_seconds",
            "Time from a client OPEN to the agent's OPEN_OK (routed streams only).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.auth_failures = Counter(
            "arc_relay_auth_failures_total",
            "Refused authentications by endpoint (agent, client, api) and reason.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.admission_refused = Counter(
            "arc_relay_admission_refused_total",
            "Handshakes answered 503 + Retry-After by admission, by endpoint (agent, client).",
            ["endpoint"],
            registry=r,
        )
        self.handshakes_in_flight = Gauge(
            "arc_relay_handshakes_in_flight", "Admitted handshakes not yet finished.", registry=r
        )
        self.upgrades_aborted = Counter(
            "arc_relay_upgrades_aborted_total",
            "Websocket upgrades whose peer went away mid-handshake, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.forwarded = Counter(
            "arc_relay_streams_forwarded_total",
            "Streams across peer links by direction (out: to the agent's replica, in: from a "
            "replica a client reached) and outcome (forwarded, stale, unreachable, refused, bad_target).",
            ["direction", "outcome"],
            registry=r,
        )
        self.forwarded_open = Gauge(
            "arc_relay_streams_forwarded_open", "Streams open on peer links now, by direction.",
            ["direction"], registry=r,
        )
        self.peer_links = Gauge(
            "arc_relay_peer_links_open", "Peer links up now, by direction (out: dialled, in: accepted).",
            ["direction"], registry=r,
        )
        self.peer_link_events = Counter(
            "arc_relay_peer_link_events_total",
            "Peer link events by direction and event (up, down, dial_failed).",
            ["direction", "event"],
            registry=r,
        )
        for direction in ("out", "in"):
            self.peer_links.labels(direction).set(0)
            self.forwarded_open.labels(direction).set(0)
        for kind in ("agent", "client"):
            self.sessions.labels(kind).set(0)
        for direction in ("client_to_agent", "agent_to_client"):
            self.bytes.labels(direction)
        for endpoint in ("agent", "client"):
            self.admission_refused.labels(endpoint)
        #: the per-cluster collector, once the health listener registered it
        self.clusters: ClusterCollector | None = None

    def render(self) -> bytes:
        """The text exposition of every metric (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's current value (tests and benchmarks), None when absent."""
        return self.registry.get_sample_value(name, labels)


class EdgeCollector:
    """The public listener's slow-loris guards (relay/listener.py, relay/edge.py)."""

    def __init__(self, gate: EdgeGate) -> None:
        self.gate = gate

    def collect(self) -> Iterable[Metric]:
        held = GaugeMetricFamily("arc_relay_edge_preauth_connections",
                                 "Connections held before their first request head is complete.")
        held.add_metric([], self.gate.held)
        refused = CounterMetricFamily("arc_relay_edge_refused",
                                      "Connections closed at accept: limits.max_preauth_connections reached.")
        refused.add_metric([], self.gate.refused)
        closed = CounterMetricFamily("arc_relay_edge_closed",
                                     "Connections closed by a slow-loris guard, by reason.", labels=["reason"])
        for reason in EDGE_CLOSE_REASONS:
            closed.add_metric([reason.replace(" ", "_")], self.gate.stats.closed[reason])
        return (held, refused, closed)


class AdmissionCollector:
    """Handshake admission (relay/admission.py): its queue and the loop lag it watches."""

    def __init__(self, admission: HandshakeAdmission) -> None:
        self.admission = admission

    def collect(self) -> Iterable[Metric]:
        a = self.admission
        # Not "..._queued": that is the counter's family name (exposed as ..._queued_total).
        queued = GaugeMetricFamily("arc_relay_admission_waiting", "Handshakes waiting for an admission turn now.")
        queued.add_metric([], a.queued)
        queued_total = CounterMetricFamily("arc_relay_admission_queued",
                                           "Handshakes that waited for an admission turn.")
        queued_total.add_metric([], a.queued_total)
        lag = GaugeMetricFamily("arc_relay_event_loop_lag_seconds",
                                "How late the event loop ran admission's lag timer.")
        lag.add_metric([], a.loop_lag())
        return (queued, queued_total, lag)


class ClusterCollector:
    """Per-cluster connectivity and open streams, with a bounded ``cluster`` label.

    Args:
        cluster_ids: Registered cluster ids (an async database read, done
            by :meth:`refresh` before a scrape; cached ``CLUSTER_LIST_SECONDS``).
        is_present: Whether a live agent session of a cluster exists.
        stream_clusters: The cluster of every open routed stream.
        max_series: Clusters given their own label (``health.max_cluster_series``).
        clock: Monotonic clock (tests).
    """

    def __init__(self, cluster_ids: Callable[[], Awaitable[Sequence[str]]], is_present: Callable[[str], bool],
                 stream_clusters: Callable[[], Iterable[str]], max_series: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cluster_ids = cluster_ids
        self._is_present = is_present
        self._stream_clusters = stream_clusters
        self.max_series = max_series
        self._clock = clock
        self._ids: Sequence[str] = ()
        self._read_at: float | None = None

    async def refresh(self) -> None:
        """Re-read the registered clusters when the last read is older than
        ``CLUSTER_LIST_SECONDS`` (the health listener awaits this before a
        scrape: collectors themselves are synchronous)."""
        now = self._clock()
        if self._read_at is None or now - self._read_at >= CLUSTER_LIST_SECONDS:
            self._read_at = now
            try:
                self._ids = await self._cluster_ids()
            except Exception as exc:  # database down: /metrics still answers, with the last list
                log.warning("cluster list for metrics not read error=%s", type(exc).__name__)

    def registered(self) -> Sequence[str]:
        """Registered cluster ids as of the last :meth:`refresh`."""
        return self._ids

    def expire(self) -> None:
        """Re-read the registered clusters at the next scrape (a cluster was
        added or deleted; benchmarks)."""
        self._read_at = None

    def collect(self) -> Iterable[Metric]:
        ids = self.registered()
        present = {cid: self._is_present(cid) for cid in ids}
        # Offline first: those are the series a "cluster offline" alert needs.
        listed = sorted(ids, key=lambda cid: (present[cid], cid))[: self.max_series]
        connected = GaugeMetricFamily("arc_relay_cluster_connected",
                                      "1 while the cluster's agent has a live session, else 0 "
                                      "(at most health.max_cluster_series clusters, offline first).",
                                      labels=["cluster"])
        for cid in sorted(listed):
            connected.add_metric([cid], 1 if present[cid] else 0)
        label_of = set(listed)
        streams: Tally[str] = Tally()
        for cid in self._stream_clusters():
            streams[cid if cid in label_of else OTHER_CLUSTERS] += 1
        per_cluster = GaugeMetricFamily("arc_relay_cluster_streams_open",
                                        "Routed streams open per cluster with any (clusters without "
                                        "a series of their own summed as cluster=\"_other\").",
                                        labels=["cluster"])
        # Only clusters with open streams: a sample per idle cluster would double
        # the scrape's size (docs/metrics.md) and say nothing a missing one does not.
        for cid in sorted(c for c in streams if c != OTHER_CLUSTERS):
            per_cluster.add_metric([cid], streams[cid])
        per_cluster.add_metric([OTHER_CLUSTERS], streams[OTHER_CLUSTERS])
        registered = GaugeMetricFamily("arc_relay_clusters_registered", "Registered clusters.")
        registered.add_metric([], len(ids))
        online = GaugeMetricFamily("arc_relay_clusters_connected",
                                   "Registered clusters whose agent has a live session.")
        online.add_metric([], sum(present.values()))
        unlisted = GaugeMetricFamily("arc_relay_clusters_unlisted",
                                     "Registered clusters beyond health.max_cluster_series "
                                     "(no per-cluster series).")
        unlisted.add_metric([], len(ids) - len(listed))
        return (connected, per_cluster, registered, online, unlisted)


class PresenceStats(Protocol):
    """What a presence (relay/presence.py, relay/presence_redis.py) counts."""

    reachable: bool | None
    errors: int
    reasserted: int
    fenced: int

    def held(self) -> dict[str, int]: ...


class PresenceCollector:
    """``arc_relay_presence_*``, read from the presence at scrape time."""

    def __init__(self, presence: PresenceStats) -> None:
        self.presence = presence

    def collect(self) -> Iterable[Metric]:
        p = self.presence
        errors = CounterMetricFamily("arc_relay_presence_errors", "Presence store operations that "
                                     "failed (unreachable, timed out).")
        errors.add_metric([], p.errors)
        reasserted = CounterMetricFamily("arc_relay_presence_reasserted", "Routes the presence store "
                                         "had lost, written again from memory.")
        reasserted.add_metric([], p.reasserted)
        fenced = CounterMetricFamily("arc_relay_presence_fenced", "Registrations refused because a "
                                     "newer session holds this replica id.")
        fenced.add_metric([], p.fenced)
        up = GaugeMetricFamily("arc_relay_presence_store_up", "1 while the presence store answered "
                               "its last operation, else 0.")
        up.add_metric([], 1 if p.reachable else 0)
        routes = GaugeMetricFamily("arc_relay_presence_routes", "Agent sessions this replica "
                                   "registers in presence.")
        routes.add_metric([], len(p.held()))
        return (errors, reasserted, fenced, up, routes)
