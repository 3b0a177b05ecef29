"""Bounded waits on a condition (never a sleep followed by an assertion)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Every wait in the tests is bounded by this (seconds): long enough for a
# loaded 2-core machine, short enough that a hang fails the test, not the run.
WAIT = 20.0
# How often a condition without an event to await is re-checked (seconds).
POLL_INTERVAL = 0.01


async def until(predicate: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """Re-check ``predicate`` on the event loop until it is truthy.

    Use it for a condition the code under test exposes as state, not as an
    event to await. Returns the truthy value.

    Raises:
        AssertionError: ``what`` did not happen within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(POLL_INTERVAL)
    return value


async def until_async(predicate: Callable[[], Awaitable[T]], what: str, timeout: float = WAIT) -> T:
    """``until`` for a condition read through a coroutine (a store query)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(POLL_INTERVAL)
    return value


def wait_until(predicate: Callable[[], T], what: str, timeout: float = WAIT, *,
               interval: float = 0.1) -> T:
    """``until`` for synchronous tests (a condition another process changes)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(interval)
    return value
