"""health: the plain-HTTP ``/livez``, ``/readyz`` and ``/metrics`` listener of every daemon.

``arc-relay`` and ``arc-agent`` each serve their health and Prometheus metrics
on a socket of their own (``health.listen``, loopback by default), apart from
the ports their users and agents reach. Imports nothing of ours.
"""

from __future__ import annotations

from health.listener import Check, HealthLimits, HealthListener

__all__ = ["Check", "HealthLimits", "HealthListener"]
