"""Background tasks of the relay's long-lived parts (status flusher, database
probe, presence writer, stream re-authorisation): one way to stop them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended, so that nothing it was
    doing overlaps what the caller does next (a final flush, closing a pool).
    ``None`` (never started) is a no-op."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
