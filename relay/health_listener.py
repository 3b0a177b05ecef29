"""The relay's health and metrics listener: what it checks and what it exposes.

``/livez``, ``/readyz`` and ``/metrics`` on ``health.listen`` (plain HTTP,
loopback by default; health/listener.py says why it shares the event loop and
how it is bounded). The public TLS port keeps ``/healthz`` and ``/readyz`` for
load balancers but no longer serves ``/metrics``: unauthenticated counters of
every cluster and principal do not belong on an Internet-facing port.
"""

from __future__ import annotations

from health import Check, HealthListener
from identity import TokenValidator, TokenValidatorCollector
from relay.listener import RelayListener
from relay.metrics import AdmissionCollector, ClusterCollector, EdgeCollector
from relay.state import RelayState

PREFIX = "arc_relay"


def ready_checks(state: RelayState) -> dict[str, Check]:
    """Readiness: the relay takes new sessions and its database answers."""

    def accepting() -> str | None:
        return None if state.accepting else "shutting down"

    def database() -> str | None:
        # The last periodic ping's answer (relay/database_health.py), not a query per probe.
        return state.database.problem() if state.database is not None else None

    return {"accepting": accepting, "database": database}


def relay_health_listener(state: RelayState, listener: RelayListener) -> HealthListener:
    """A (not started) health listener whose registry holds every relay metric.

    Registers the live-state collectors (listener guards, admission,
    clusters, token validator) on ``state.metrics.registry``.
    """
    registry = state.metrics.registry
    config = state.config
    registry.register(EdgeCollector(listener.gate))
    registry.register(AdmissionCollector(state.admission))
    clusters = ClusterCollector(
        state.registry.ids,
        state.directory.is_present,
        lambda: (live.cluster for live in state.live_streams),
        config.max_cluster_series,
    )
    registry.register(clusters)
    state.metrics.clusters = clusters
    validator = state.validator if isinstance(state.validator, TokenValidator) else None
    state.validator_collector = TokenValidatorCollector(validator, PREFIX)
    registry.register(state.validator_collector)
    health = HealthListener(registry, ready_checks(state), limits=config.health_limits, name="relay",
                            before_metrics=clusters.refresh)
    registry.register(health.collector(PREFIX))
    return health
