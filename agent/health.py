"""arc-agent's health and metrics listener (``health.listen``, loopback by default).

``/readyz``: the agent's relay session is up (``relay-session``) and, when it
runs kube-aad-proxy, the API server answered it (``kube-aad-proxy``,
agent/kube_aad_proxy/health.py). ``/livez``: the event loop answers and the
relay dial loop still runs (``dial-loop``).
``/metrics``: ``arc_agent_*`` and ``arc_kube_aad_proxy_*`` on one registry
(docs/metrics.md). health/listener.py has the bounds and why the listener
shares the agent's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.connector import Connector
from agent.kube_aad_proxy import KubeAadProxy
from agent.kube_aad_proxy.health import PREFIX as PROXY_PREFIX
from agent.kube_aad_proxy.health import KubeAadProxyCollector
from health import Check, HealthLimits, HealthListener
from identity import TokenValidator, TokenValidatorCollector

PREFIX = "arc_agent"
STREAM_OUTCOMES = ("accepted", "upstream_failed", "unknown_target")


class AgentCollector:
    """``arc_agent_*``: the relay session and the streams it brought."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    def collect(self) -> Iterable[Metric]:
        c = self.connector
        connected = GaugeMetricFamily(f"{PREFIX}_relay_connected",
                                      "1 while the agent's relay session is up, else 0.")
        connected.add_metric([], 1 if c.connected else 0)
        sessions = CounterMetricFamily(f"{PREFIX}_relay_sessions",
                                       "Relay sessions established (reconnects included).")
        sessions.add_metric([], c.sessions_started)
        failures = CounterMetricFamily(f"{PREFIX}_relay_dial_failures",
                                       "Dials to the relay that failed (refused, busy, unreachable).")
        failures.add_metric([], c.dial_failures)
        busy = CounterMetricFamily(f"{PREFIX}_relay_busy_refusals",
                                   "Dials the relay answered busy (429/503 with Retry-After).")
        busy.add_metric([], c.busy_refusals)
        session = c.session
        open_streams = GaugeMetricFamily(f"{PREFIX}_streams_open",
                                         "Streams open on the live relay session (control stream included).")
        open_streams.add_metric([], session.streams if session is not None and not session.closed else 0)
        streams = CounterMetricFamily(f"{PREFIX}_streams", "Streams the relay opened, by outcome.",
                                      labels=["outcome"])
        for outcome in STREAM_OUTCOMES:
            streams.add_metric([outcome], c.streams[outcome])
        return (connected, sessions, failures, busy, open_streams, streams)


def agent_health_listener(connector: Connector, proxy: KubeAadProxy | None,
                          limits: HealthLimits | None = None,
                          dial_loop: asyncio.Future[None] | None = None) -> HealthListener:
    """A (not started) health listener for one agent process and its kube-aad-proxy.

    Args:
        connector: The relay connector (readiness: its session is up).
        proxy: kube-aad-proxy, when this agent runs one.
        limits: The listener's bounds.
        dial_loop: The task running ``connector.run()``: liveness fails once it
            has ended, so the kubelet restarts an agent that can never reconnect.
    """
    registry = CollectorRegistry()
    registry.register(AgentCollector(connector))
    live: dict[str, Check] = {}
    if dial_loop is not None:
        def dial_loop_running() -> str | None:
            return "the relay dial loop has ended" if dial_loop.done() else None

        live["dial-loop"] = dial_loop_running

    def relay_session() -> str | None:
        return None if connector.connected else f"no relay session ({connector.last_error or 'connecting'})"

    ready: dict[str, Check] = {"relay-session": relay_session}
    if proxy is not None:
        registry.register(KubeAadProxyCollector(proxy))
        validator = proxy.config.validator
        collector = TokenValidatorCollector(
            validator if isinstance(validator, TokenValidator) else None, PROXY_PREFIX)
        registry.register(collector)

        def follow(new: object) -> None:  # a reload swapped the validator
            collector.validator = new if isinstance(new, TokenValidator) else None
        proxy.reload_listeners.append(follow)
        ready["kube-aad-proxy"] = proxy.health.check
    health = HealthListener(registry, ready, live=live, limits=limits, name="agent")
    registry.register(health.collector(PREFIX))
    return health
