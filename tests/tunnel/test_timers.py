"""The per-loop timer wheel (tunnel/aio_timers.py) on a real event loop.

Lateness is never asserted (a busy machine delays any timer); what is:
never early (beyond the documented millisecond), order, cancel and re-arm
semantics, one wake-up for many deadlines, nothing scheduled once idle, and
a failing callback not stopping the others.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tunnel.aio_timers import TimerWheel, timer_wheel

WAIT = 20.0  # bound for every wait (never reached when all is well)
EARLY = 0.001  # a timer may run this much early (aio_timers._EARLY)


async def test_timers_run_once_in_deadline_order_and_never_early() -> None:
    """Five timers armed out of order run once each, earliest deadline first,
    none before its deadline (less the documented millisecond)."""
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    fired: list[tuple[float, float]] = []  # (deadline, when it ran)
    done = asyncio.Event()
    delays = [0.25, 0.05, 0.15, 0.1, 0.2]

    def make(deadline: float) -> None:
        def run() -> None:
            fired.append((deadline, loop.time()))
            if len(fired) == len(delays):
                done.set()
        wheel.timer(run).schedule(deadline - loop.time())

    start = loop.time()
    for delay in delays:
        make(start + delay)
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert [deadline for deadline, _ in fired] == sorted(start + d for d in delays)
    assert all(ran >= deadline - EARLY for deadline, ran in fired)
    assert len(wheel) == 0 and wheel.next_wakeup is None


async def test_cancelled_timer_never_runs_and_rearmed_timer_runs_once_at_its_new_deadline() -> None:
    """cancel() disarms; schedule() on an armed timer moves it (one run)."""
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    runs: list[str] = []
    moved_ran: list[float] = []
    done = asyncio.Event()
    cancelled = wheel.timer(lambda: runs.append("cancelled"))
    moved = wheel.timer(lambda: (runs.append("moved"), moved_ran.append(loop.time())))
    last = wheel.timer(lambda: (runs.append("last"), done.set()))
    cancelled.schedule(0.02)
    moved.schedule(0.02)
    moved_at = loop.time()
    moved.schedule(0.1)  # replaces the 0.02 s arming
    last.schedule(0.2)
    cancelled.cancel()
    assert not cancelled.armed and moved.armed
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert runs == ["moved", "last"]
    assert moved_ran[0] >= moved_at + 0.1 - EARLY
    assert not moved.armed


async def test_callback_may_cancel_a_timer_of_its_own_slot() -> None:
    """Two timers in one slot: whichever runs first cancels the other, which
    then does not run (a session closing another's timer mid-tick)."""
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    runs: list[str] = []
    timers = {}

    def first(me: str, other: str) -> None:
        runs.append(me)
        timers[other].cancel()

    timers["a"] = wheel.timer(lambda: first("a", "b"))
    timers["b"] = wheel.timer(lambda: first("b", "a"))
    done = asyncio.Event()
    timers["a"].schedule(0.05)
    timers["b"].schedule(0.05)
    wheel.timer(done.set).schedule(0.15)
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert len(runs) == 1


async def test_many_deadlines_share_few_wakeups() -> None:
    """1,000 timers due about one second from now run in a handful of wake-ups
    (one per slot), not 1,000."""
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    count = 1000
    fired = 0
    done = asyncio.Event()

    def run() -> None:
        nonlocal fired
        fired += 1
        if fired == count:
            done.set()

    for _ in range(count):
        wheel.timer(run).schedule(1.0)
    async with asyncio.timeout(WAIT):
        await done.wait()
    assert wheel.ticks <= 4, f"{wheel.ticks} wake-ups for {count} deadlines"


async def test_failing_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises (a bug) is logged with its traceback; the other
    timers of the same slot run, and the wheel keeps working."""
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    done = asyncio.Event()
    later = asyncio.Event()

    def broken() -> None:
        raise ValueError("bug")

    wheel.timer(broken).schedule(0.05)
    wheel.timer(done.set).schedule(0.05)
    with caplog.at_level(logging.ERROR, logger="tunnel"):
        async with asyncio.timeout(WAIT):
            await done.wait()
        wheel.timer(later.set).schedule(0.01)
        async with asyncio.timeout(WAIT):
            await later.wait()
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ValueError]


async def test_running_loop_has_one_shared_wheel() -> None:
    """timer_wheel() returns the same wheel for every caller on one loop,
    and its timers run on that loop."""
    wheel = timer_wheel()
    assert timer_wheel() is wheel
    done = asyncio.Event()
    wheel.timer(done.set).schedule(0.01)
    async with asyncio.timeout(WAIT):
        await done.wait()
