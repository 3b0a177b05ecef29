"""Admission of handshakes: take only what can be finished, refuse the rest at once.

After a relay restart thousands of agents dial within seconds. Accepting every
handshake (assertion or token check, registry lookup, websocket upgrade) at
once starves the event loop: handshakes time out on the agents, which then
abandon sessions the relay just set up, and ``/readyz``, ``/metrics`` and the
management API stop answering. :class:`HandshakeAdmission` bounds both

- how many handshakes are in flight (``admission.max_concurrent_handshakes``),
- how fast new ones start (``admission.handshakes_per_second``, a token bucket
  holding at most one second's worth, so a burst after idle is bounded too),

and every handshake beyond either bound is answered at once, before any
crypto or database work, with ``503`` and a ``Retry-After`` hint. Agents and
arc-proxy wait the hint plus up to one more (agent/connector_dial.py).

The hint adapts to the storm: a refused peer coming back after ``h`` to
``2h`` seconds, N refused peers return at about N/h per second, so the hint is
N / ``handshakes_per_second`` (N: refusals in the last second), never below
``admission.retry_after_seconds`` nor above ``admission.max_retry_after_seconds``.
5,000 agents after a restart are thus told ~25 s at 200/s and come back at
about the pace the relay admits, instead of every 2-4 s, each retry costing a
TLS handshake for nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class HandshakeAdmission:
    """Counts handshakes in flight and meters their start rate.

    Call :meth:`try_admit` at the top of a handshake handler; if it returns
    True, call :meth:`done` exactly once when authentication and upgrade have
    finished (successfully or not).
    """

    def __init__(self, max_concurrent: int, per_second: float, retry_after: int,
                 clock: Callable[[], float] = time.monotonic, *, max_retry_after: int = 60) -> None:
        self.max_concurrent = max_concurrent
        self.per_second = per_second
        self.retry_after = retry_after
        self.max_retry_after = max(retry_after, max_retry_after)
        self.clock = clock
        self.in_flight = 0
        self.refused = 0
        self._tokens = max(1.0, per_second)
        self._refilled_at = clock()
        # Refusals in the current one-second window and in the one before.
        self._window_start = clock()
        self._window_refusals = 0
        self._previous_refusals = 0

    def _count_refusal(self) -> None:
        self.refused += 1
        now = self.clock()
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self._previous_refusals = self._window_refusals if elapsed < 2.0 else 0
            self._window_refusals = 0
            self._window_start = now
        self._window_refusals += 1

    def retry_after_hint(self) -> int:
        """Seconds to put in ``Retry-After`` now (see module docstring)."""
        if self.per_second <= 0:
            return self.retry_after
        demand = max(self._window_refusals, self._previous_refusals)
        return max(self.retry_after, min(self.max_retry_after, math.ceil(demand / self.per_second)))

    def _take_token(self) -> bool:
        if self.per_second <= 0:
            return True
        now = self.clock()
        # At most one second's worth banked: a burst after a quiet period is
        # bounded by the rate, not by how long the relay was idle.
        self._tokens = min(max(1.0, self.per_second),
                           self._tokens + (now - self._refilled_at) * self.per_second)
        self._refilled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def try_admit(self) -> bool:
        """Admit one handshake (True), or False: answer 503 + Retry-After."""
        if self.in_flight >= self.max_concurrent or not self._take_token():
            self._count_refusal()
            return False
        self.in_flight += 1
        return True

    def done(self) -> None:
        """One admitted handshake has finished."""
        self.in_flight -= 1
