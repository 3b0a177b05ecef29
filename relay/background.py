"""Background tasks of the relay's long-lived parts (status flusher, database
probe, presence writer, stream re-authorisation): one way to stop them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["RECANCEL_SECONDS", "cancel_and_wait"]

# How long a cancelled task has to end before it is cancelled again.
RECANCEL_SECONDS = 1.0


async def cancel_and_wait(task: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended, so that nothing it was
    doing overlaps what the caller does next (a final flush, closing a pool).
    ``None`` (never started) is a no-op."""
    if task is None:
        return
    # Cancel again until it ends: on Python 3.11 a cancel that lands while
    # asyncio.timeout/wait_for is expiring (or inside a client library's own
    # cleanup) can be swallowed, and a `while True` task would then run on
    # (a relay stop waited ~19 s on the presence writer that way).
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task
