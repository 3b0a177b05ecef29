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

and a handshake beyond a bound waits its turn (:meth:`HandshakeAdmission.admit`,
first come first served) up to ``admission.max_queue_seconds``, at most
``admission.max_queued_handshakes`` of them: its TLS handshake is already paid
for, and a waiting request costs memory, not CPU. It joins the queue only if
the queue ahead of it drains within that time at the measured rate (a peer
that would time out in the queue is refused at once: waiting first would cost
it the wait and the relay the slot). Beyond the queue's bounds it is
answered, before any crypto or database work, with ``503`` and a
``Retry-After`` hint.

Hints are staggered: each refused peer is given its own slot in a virtual
queue advancing by 1/R seconds per refusal, behind the handshakes waiting in
the real queue (R: the fixed rate, else the rate at which handshakes were
completed in a recent second at the limit, i.e. with refusals or waiters), capped at
``admission.max_retry_after_seconds`` ahead, never below
``admission.retry_after_seconds``. Agents come back within a second of their
slot (agent/connector_dial.py), so N refused agents return at about the rate
the relay finishes handshakes, spread over N/R seconds rather than all at once
(each early return costs a TLS handshake for nothing) or over 2N/R.
"""

from __future__ import annotations

import asyncio
import collections
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

    def __init__(self, interval: float = LAG_SAMPLE_INTERVAL,
                 on_tick: Callable[[], None] | None = None) -> None:
        self.interval = interval
        self.on_tick = on_tick
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
        if self.on_tick is not None:
            self.on_tick()

    def current(self) -> float:
        """The last sampled lag, or how overdue the timer is now if more."""
        if self._loop is None or self._handle is None:
            return 0.0
        return max(self.last, self._loop.time() - self._expected)


class HandshakeAdmission:
    """Counts handshakes in flight, watches the loop's lag, meters the rate.

    Await :meth:`admit` (or call :meth:`try_admit`, which never waits) at the
    top of a handshake handler; if it returns True, call :meth:`done` exactly
    once when authentication and upgrade have finished (successfully or not).
    If it returns False, answer 503 with :meth:`retry_after_hint`.

    Args:
        max_concurrent: Handshakes in flight at most.
        per_second: Fixed start rate (token bucket); 0 leaves it to the lag bound.
        retry_after: Least ``Retry-After`` hint (seconds).
        clock: Monotonic clock (tests).
        max_retry_after: Greatest hint.
        max_loop_lag: Refuse while the loop lag is above this (0: no lag bound).
        loop_lag: The lag source (default: the :class:`LoopLag` run by :meth:`start`).
        max_queue_seconds: How long :meth:`admit` waits for a turn (0: never).
        max_queued: How many may wait at once.
    """

    def __init__(self, max_concurrent: int, per_second: float, retry_after: int,
                 clock: Callable[[], float] = time.monotonic, *, max_retry_after: int = 60,
                 max_loop_lag: float = 0.0, loop_lag: Callable[[], float] | None = None,
                 max_queue_seconds: float = 0.0, max_queued: int = 0) -> None:
        self.max_concurrent = max_concurrent
        self.per_second = per_second
        self.retry_after = retry_after
        self.max_retry_after = max(retry_after, max_retry_after)
        self.max_loop_lag = max_loop_lag
        self.clock = clock
        self.max_queue_seconds = max_queue_seconds
        self.max_queued = max_queued
        self.queued_total = 0
        # Handshakes waiting for a turn, oldest first; a waiter's future gets
        # True when a slot is handed to it.
        self._waiting: collections.deque[asyncio.Future[bool]] = collections.deque()
        # Its timer also hands free turns to waiters (a token refilled, the lag fallen).
        self.lag_monitor = LoopLag(on_tick=self._hand_over)
        self.loop_lag: Callable[[], float] = loop_lag or self.lag_monitor.current
        self.in_flight = 0
        self.refused = 0
        # Times the loop lag held a handshake back (refused or kept waiting).
        self.lag_holds = 0
        self._tokens = max(1.0, per_second)
        self._refilled_at = clock()
        # The virtual queue of refused peers: the slot given to the last one.
        self._horizon = clock()
        # Handshakes completed and refused in the current one-second window,
        # and the capacity measured over the last window that was at its limit.
        self._window_start = clock()
        self._window_done = 0
        self._window_saturated = False
        self._measured_rate = INITIAL_RATE_ESTIMATE

    def start(self) -> None:
        """Start the loop-lag timer on the running loop (needed by the lag
        bound and by the queue)."""
        if self.max_loop_lag > 0 or self.max_queue_seconds > 0:
            self.lag_monitor.start()

    def stop(self) -> None:
        """Stop the loop-lag timer."""
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
            # Only a window in which handshakes were refused or waited was at
            # the relay's limit: its completions measure capacity. A quiet one
            # measures demand and keeps the last estimate.
            if (self._window_saturated or self._waiting) and elapsed < 2.0:
                self._measured_rate = self._window_done / elapsed
            self._window_start, self._window_done, self._window_saturated = now, 0, False

    def _count_refusal(self) -> None:
        self.refused += 1
        now = self.clock()
        self._roll_window(now)
        self._window_saturated = True
        rate = self.rate_estimate()
        # Behind the waiters: they are served before any refused peer returns.
        slot = max(self._horizon, now + len(self._waiting) / rate) + 1.0 / rate
        self._horizon = min(slot, now + self.max_retry_after)

    def retry_after_hint(self) -> int:
        """Seconds to put in ``Retry-After`` now: the slot of the last refused
        peer (see module docstring)."""
        ahead = self._horizon - self.clock()
        # (less a microsecond: sums of 1/R slots must not round 2.0000001 up to 3)
        return max(self.retry_after, min(self.max_retry_after, math.ceil(ahead - 1e-6)))

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

    @property
    def queued(self) -> int:
        """Handshakes waiting for a turn now."""
        return len(self._waiting)

    def _may_start(self) -> bool:
        """Whether one more handshake may start now (takes a token if so)."""
        if self.in_flight >= self.max_concurrent:
            return False
        if self.max_loop_lag > 0 and self.loop_lag() > self.max_loop_lag:
            self.lag_holds += 1
            return False
        return self._take_token()

    def try_admit(self) -> bool:
        """Admit one handshake now (True), or False: answer 503 + Retry-After."""
        if self._waiting or not self._may_start():  # never overtake a waiter
            self._count_refusal()
            return False
        self.in_flight += 1
        return True

    async def admit(self) -> bool:
        """Admit one handshake, waiting up to ``max_queue_seconds`` for a turn
        (first come, first served); False: answer 503 + Retry-After."""
        if not self._waiting and self._may_start():
            self.in_flight += 1
            return True
        if not self._may_wait():
            self._count_refusal()
            return False
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self.queued_total += 1
        self._window_saturated = True
        try:
            async with asyncio.timeout(self.max_queue_seconds):
                return await turn
        except TimeoutError:
            if turn.done() and not turn.cancelled():
                return turn.result()  # handed a slot as the wait ran out
            self._count_refusal()
            return False
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self.done()  # handed a slot it will not use
            raise
        finally:
            if not turn.done():
                turn.cancel()
            if turn in self._waiting:
                self._waiting.remove(turn)

    def _may_wait(self) -> bool:
        """Whether one more handshake may join the queue: room in it, and the
        waiters ahead of it served within ``max_queue_seconds`` at the
        estimated rate."""
        if self.max_queue_seconds <= 0 or len(self._waiting) >= self.max_queued:
            return False
        return (len(self._waiting) + 1) / self.rate_estimate() <= self.max_queue_seconds

    def _hand_over(self) -> None:
        """Give free slots to waiters, oldest first (after a handshake ends
        and on every loop-lag tick)."""
        while self._waiting and self._may_start():
            turn = self._waiting.popleft()
            if not turn.done():
                self.in_flight += 1
                turn.set_result(True)

    def done(self) -> None:
        """One admitted handshake has finished."""
        self.in_flight -= 1
        self._roll_window(self.clock())
        self._window_done += 1
        self._hand_over()
