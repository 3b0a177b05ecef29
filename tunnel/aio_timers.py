"""One coarse timer per event loop for every session's keepalive and idle sweep.

Theory of operation. A relay holds thousands of idle sessions; each needs a
keepalive deadline and, while it has streams, an idle sweep. A task (or an
``asyncio`` timer) per deadline means one wake-up of the event loop, one
``epoll_wait`` and one heap operation among thousands per deadline. Here every
deadline of a loop goes into one ``TimerWheel``: deadlines are rounded *up* to
a slot (a grid of ``quantum(delay)`` seconds, at most 1 s and at most 1/16 of
the delay, so never early by more than ``_EARLY`` and late by at most
1/16), deadlines in one slot share it, and the wheel keeps a single
``loop.call_at`` for its earliest slot. A tick costs O(timers due): a slot is a
set, popped whole when due; re-arming or cancelling a timer moves or removes
one set member (an emptied slot costs one last wake-up). With nothing armed the wheel schedules nothing at all.

Callbacks run on the loop, synchronously, one after the other: they must not
block. One that raises is logged with its traceback (a bug) and the others in
the slot still run.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
from collections.abc import Callable

__all__ = ["Timer", "TimerWheel", "timer_wheel"]

log = logging.getLogger("tunnel")

# Slots are whole multiples of 1/1024 s (integer keys: equal deadlines on one
# grid land in one slot whatever float rounding did to them).
_UNITS = 1024
# Coarsest slot: 1 s. The keepalive (30 s) and the idle sweep (60 s) need no
# finer grain, and 5,000 sessions' deadlines then cost at most one wake-up a
# second, not one per session.
_MAX_QUANTUM_UNITS = _UNITS
# A slot is due this much before its time: asyncio itself runs a timer up to
# its clock resolution early, and re-arming for a few microseconds would spin.
_EARLY = 0.001


def _quantum_units(delay: float) -> int:
    """The slot width for a deadline ``delay`` seconds away: the largest power
    of two (in 1/1024 s) not above delay / 16, between 1 unit and 1 s. Firing
    at most 1/16 late keeps a 30 s keepalive within 2 s and a 0.1 s test
    timeout within 6 ms."""
    wanted = delay * _UNITS / 16
    if wanted < 2:
        return 1
    return min(_MAX_QUANTUM_UNITS, 1 << int(math.log2(wanted)))


class Timer:
    """One re-armable deadline of a ``TimerWheel`` (make it with ``wheel.timer``).

    ``schedule(delay)`` arms it (re-arming moves it); ``cancel()`` disarms it.
    The callback runs once per arming, on the loop, no earlier than ``delay``
    less a millisecond and at most ``delay / 16`` (or 1 s) later.
    """

    __slots__ = ("_callback", "_slot", "_wheel")

    def __init__(self, wheel: TimerWheel, callback: Callable[[], None]) -> None:
        self._wheel = wheel
        self._callback = callback
        self._slot: int | None = None  # the slot key while armed

    @property
    def armed(self) -> bool:
        """True while the callback is due to run."""
        return self._slot is not None

    def schedule(self, delay: float) -> None:
        """Run the callback ``delay`` seconds from now (once); replaces any
        earlier arming."""
        self._wheel._arm(self, delay)

    def cancel(self) -> None:
        """Do not run the callback (no-op when not armed)."""
        if self._slot is not None:
            self._wheel._disarm(self)


class TimerWheel:
    """Every ``Timer`` of one event loop behind one ``loop.call_at``.

    Args:
        loop: The loop whose thread alone arms, cancels and runs the timers.

    Use ``timer_wheel()`` for the running loop's shared wheel.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, set[Timer]] = {}
        self._keys: list[int] = []  # heap of slot keys (a key whose slot emptied stays until due)
        self._handle: asyncio.TimerHandle | None = None
        self._handle_key: int | None = None
        self.ticks = 0  # wake-ups so far (what the wheel saves: tests, benchmarks)

    def __len__(self) -> int:
        """Armed timers."""
        return sum(map(len, self._slots.values()))

    @property
    def next_wakeup(self) -> float | None:
        """Loop time of the wheel's next wake-up; None when nothing is scheduled."""
        return None if self._handle_key is None else self._handle_key / _UNITS

    def timer(self, callback: Callable[[], None]) -> Timer:
        """A new, disarmed timer that runs ``callback`` when due."""
        return Timer(self, callback)

    def _arm(self, timer: Timer, delay: float) -> None:
        if timer._slot is not None:
            self._disarm(timer)
        quantum = _quantum_units(delay)
        when = (self._loop.time() + max(delay, 0.0)) * _UNITS
        key = -(-math.ceil(when) // quantum) * quantum  # round up to the slot grid
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            heapq.heappush(self._keys, key)
            if self._handle_key is None or key < self._handle_key:
                self._wake_at(key)
        slot.add(timer)
        timer._slot = key

    def _disarm(self, timer: Timer) -> None:
        key = timer._slot
        timer._slot = None
        slot = self._slots.get(key) if key is not None else None
        if slot is not None:
            # An emptied slot stays (in the dict and the heap) until due: a key
            # is pushed only when it is not in the dict, so never twice.
            slot.discard(timer)

    def _wake_at(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_key = key
        self._handle = self._loop.call_at(key / _UNITS, self._tick)

    def _tick(self) -> None:
        self._handle = self._handle_key = None
        self.ticks += 1
        due = (self._loop.time() + _EARLY) * _UNITS
        keys = self._keys
        slots = self._slots
        while keys and keys[0] <= due:
            key = heapq.heappop(keys)
            for timer in slots.pop(key):
                # A callback of this slot may have cancelled or re-armed a
                # later one; re-armed to this very key it sits in a new slot.
                if timer._slot != key or timer in slots.get(key, ()):
                    continue
                timer._slot = None
                try:
                    timer._callback()
                except Exception:
                    log.exception("timer callback failed")
        # A callback may have armed the handle for a new slot later than one
        # already waiting: wake for the earliest.
        if keys and self._handle_key != keys[0]:
            self._wake_at(keys[0])


class _PerThread(threading.local):
    """The wheel of the loop running on this thread (one loop per thread)."""

    wheel: TimerWheel | None = None


_THREAD = _PerThread()


def timer_wheel() -> TimerWheel:
    """The running loop's shared wheel (made on first use).

    Raises:
        RuntimeError: No event loop is running in this thread.
    """
    loop = asyncio.get_running_loop()
    wheel = _THREAD.wheel
    if wheel is None or wheel._loop is not loop:
        # A new loop on this thread (tests run one per test): a new wheel. A
        # timer of the old loop keeps its own wheel and still fires there.
        wheel = _THREAD.wheel = TimerWheel(loop)
    return wheel
