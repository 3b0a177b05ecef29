"""How a tunnel client redials the relay: backoff with full jitter, and the
relay's ``Retry-After`` hint (503/429 from its handshake admission).

Shared by the agent's connector, arc-proxy's session keeper and the scale
benchmark's simulated agents, so that all of them read a hint and spread
their redials the same way. Standard library only.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "RETRY_AFTER_CAP",
    "RETRY_AFTER_JITTER",
    "Backoff",
    "retry_after_delay",
    "retry_after_seconds",
]

# A Retry-After hint longer than this is treated as this (seconds): a relay
# (or a proxy in front of it) must not park agents for hours.
RETRY_AFTER_CAP = 60.0


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The ``Retry-After`` delta-seconds of a refusal (capped at
    ``RETRY_AFTER_CAP``), or None when absent or not a number (the HTTP-date
    form is not used by the relay and is ignored)."""
    value = (headers or {}).get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, RETRY_AFTER_CAP)


# Spread added to a Retry-After hint, at most (seconds). The relay staggers
# its hints itself (each refused agent gets its own slot, relay/admission.py),
# and hints are whole seconds: one second of jitter spreads the agents given
# the same hint over that second. Spreading over one more hint instead made
# 5,000 agents after a relay restart take twice as long as the relay needed.
RETRY_AFTER_JITTER = 1.0


def retry_after_delay(hint: float) -> float:
    """When to redial after a ``Retry-After: hint``: not before the hint, and
    within ``RETRY_AFTER_JITTER`` (or the hint, if shorter) after it:
    uniform in ``[hint, hint + min(hint, RETRY_AFTER_JITTER)]``."""
    return hint + random.uniform(0.0, min(hint, RETRY_AFTER_JITTER))


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the ceiling is ``initial``
    doubling up to ``cap``, each delay is drawn uniformly in [0, ceiling]
    (``random.uniform(0, min(cap, initial * 2**n))``) so a fleet that lost
    its relay at the same instant does not redial in waves."""

    initial: float = 0.1
    cap: float = 2.0
    attempt: int = 0

    def ceiling(self, cap: float | None = None) -> float:
        """The upper bound of the next delay."""
        limit = self.cap if cap is None else cap
        return min(limit, self.initial * float(2 ** min(self.attempt, 30)))

    def next_delay(self, cap: float | None = None) -> float:
        """The delay before the next attempt (advances the sequence); ``cap``
        overrides the configured cap for this one delay."""
        delay = self.ceiling(cap)
        self.attempt += 1
        return random.uniform(0.0, delay)

    def reset(self) -> None:
        """Start again from ``initial`` (after a stable connection)."""
        self.attempt = 0
