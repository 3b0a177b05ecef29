"""Admission of handshakes: take only what can be finished, refuse the rest at once.

After a relay restart thousands of agents dial within seconds. Accepting every
handshake (assertion or token check, registry lookup, websocket upgrade) at
once starves the event loop: handshakes time out on the agents, which then
abandon sessions the relay just set up, and ``/readyz``, ``/metrics`` and the
management API stop answering. :class:`HandshakeAdmission` bounds

- how many handshakes are in flight (``admission.max_concurrent_handshakes``),
- how busy the event loop may be (``admission.max_loop_lag_seconds``): a
  periodic timer (:class:`LoopLag`) measures how late the loop runs it; while
  that lag is above the bound, new handshakes are refused. This admits at the
  rate the relay can actually finish, on any machine, without a tuned rate;
- optionally, how fast new ones start (``admission.handshakes_per_second``, a
  token bucket holding at most one second's worth; 0, the default, leaves the
  rate to the lag bound),

and every handshake beyond a bound is answered at once, before any crypto or
database work, with ``503`` and a ``Retry-After`` hint.

Hints are staggered: each refused peer is given its own slot in a virtual
queue advancing by 1/R seconds per refusal (R: the fixed rate, else the rate
at which handshakes were recently completed), capped at
``admission.max_retry_after_seconds`` ahead, never below
``admission.retry_after_seconds``. Agents come back within a second of their
slot (agent/connector_dial.py), so N refused agents return at about the rate
the relay finishes handshakes, spread over N/R seconds rather than all at once
(each early return costs a TLS handshake for nothing) or over 2N/R.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

# How often the loop-lag timer runs: 20 wakeups/s cost nothing measurable
# idle, and a stall is seen within 50 ms.
LAG_SAMPLE_INTERVAL = 0.05
# Handshakes/s assumed before any was completed (the first refusals after a
# restart are hinted with it); measured completion rates replace it within a
# second. An optimistic guess costs an early return and a second refusal.
INITIAL_RATE_ESTIMATE = 200.0
# The rate estimate never drops below this: a quiet second must not push
# every later hint to the cap.
MIN_RATE_ESTIMATE = 20.0


class LoopLag:
    """How late the event loop runs a periodic timer (seconds): the time a
    ready callback waits for the loop right now.

    Call :meth:`start` on the running loop and :meth:`stop` when done.
    """

    def __init__(self, interval: float = LAG_SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.last = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start sampling on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._expected = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._expected, self._tick)

    def stop(self) -> None:
        """Stop sampling."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.last = max(0.0, now - self._expected)
        self._expected = now + self.interval
        self._handle = self._loop.call_at(self._expected, self._tick)

    def current(self) -> float:
        """The last sampled lag, or how overdue the timer is now if more."""
        if self._loop is None or self._handle is None:
            return 0.0
        return max(self.last, self._loop.time() - self._expected)


class HandshakeAdmission:
    """Counts handshakes in flight, watches the loop's lag, meters the rate.

    Call :meth:`try_admit` at the top of a handshake handler; if it returns
    True, call :meth:`done` exactly once when authentication and upgrade have
    finished (successfully or not). If it returns False, answer 503 with
    :meth:`retry_after_hint`.

    Args:
        max_concurrent: Handshakes in flight at most.
        per_second: Fixed start rate (token bucket); 0 leaves it to the lag bound.
        retry_after: Least ``Retry-After`` hint (seconds).
        clock: Monotonic clock (tests).
        max_retry_after: Greatest hint.
        max_loop_lag: Refuse while the loop lag is above this (0: no lag bound).
        loop_lag: The lag source (default: a :class:`LoopLag` run by :meth:`start`).
    """

    def __init__(self, max_concurrent: int, per_second: float, retry_after: int,
                 clock: Callable[[], float] = time.monotonic, *, max_retry_after: int = 60,
                 max_loop_lag: float = 0.0, loop_lag: Callable[[], float] | None = None) -> None:
        self.max_concurrent = max_concurrent
        self.per_second = per_second
        self.retry_after = retry_after
        self.max_retry_after = max(retry_after, max_retry_after)
        self.max_loop_lag = max_loop_lag
        self.clock = clock
        self.lag_monitor = LoopLag() if loop_lag is None else None
        self.loop_lag: Callable[[], float] = loop_lag or self.lag_monitor.current  # type: ignore[union-attr]
        self.in_flight = 0
        self.refused = 0
        self.refused_for_lag = 0
        self._tokens = max(1.0, per_second)
        self._refilled_at = clock()
        # The virtual queue of refused peers: the slot given to the last one.
        self._horizon = clock()
        # Handshakes completed and refused in the current one-second window,
        # and the capacity measured over the last window that was at its limit.
        self._window_start = clock()
        self._window_done = 0
        self._window_refused = 0
        self._measured_rate = INITIAL_RATE_ESTIMATE

    def start(self) -> None:
        """Start the loop-lag timer (on the running loop), if it is ours."""
        if self.lag_monitor is not None and self.max_loop_lag > 0:
            self.lag_monitor.start()

    def stop(self) -> None:
        """Stop the loop-lag timer."""
        if self.lag_monitor is not None:
            self.lag_monitor.stop()

    def rate_estimate(self) -> float:
        """Handshakes per second the hints assume: the fixed rate, else the
        measured completion rate."""
        if self.per_second > 0:
            return self.per_second
        self._roll_window(self.clock())
        return max(MIN_RATE_ESTIMATE, self._measured_rate)

    def _roll_window(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            # Only a window in which handshakes were refused was at the
            # relay's limit: its completions measure capacity. A quiet one
            # measures demand and keeps the last estimate.
            if self._window_refused and elapsed < 2.0:
                self._measured_rate = self._window_done / elapsed
            self._window_start, self._window_done, self._window_refused = now, 0, 0

    def _count_refusal(self) -> None:
        self.refused += 1
        now = self.clock()
        self._roll_window(now)
        self._window_refused += 1
        slot = max(self._horizon, now) + 1.0 / self.rate_estimate()
        self._horizon = min(slot, now + self.max_retry_after)

    def retry_after_hint(self) -> int:
        """Seconds to put in ``Retry-After`` now: the slot of the last refused
        peer (see module docstring)."""
        ahead = self._horizon - self.clock()
        return max(self.retry_after, min(self.max_retry_after, math.ceil(ahead)))

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
        if self.in_flight >= self.max_concurrent:
            self._count_refusal()
            return False
        if self.max_loop_lag > 0 and self.loop_lag() > self.max_loop_lag:
            self.refused_for_lag += 1
            self._count_refusal()
            return False
        if not self._take_token():
            self._count_refusal()
            return False
        self.in_flight += 1
        return True

    def done(self) -> None:
        """One admitted handshake has finished."""
        self.in_flight -= 1
        self._roll_window(self.clock())
        self._window_done += 1
