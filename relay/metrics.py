"""Prometheus metrics of one relay (served at ``/metrics``).

Each ``RelayMetrics`` owns its own ``CollectorRegistry`` so several relays in
one process (tests) never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "RelayMetrics"]


class RelayMetrics:
    """The relay's counters, gauges and histograms."""

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
        for kind in ("agent", "client"):
            self.sessions.labels(kind).set(0)
        for direction in ("client_to_agent", "agent_to_client"):
            self.bytes.labels(direction)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
