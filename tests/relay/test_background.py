"""relay.background.cancel_and_wait ends a task even if it swallows a cancel
(as Python 3.11's asyncio.timeout/wait_for can when a cancel and an expiry meet)."""

from __future__ import annotations

import asyncio

from relay.background import cancel_and_wait


async def test_cancel_and_wait_ends_a_task_that_swallowed_the_first_cancel() -> None:
    cancels = 0
    looping = asyncio.Event()

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                looping.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # the swallowed cancel: a `while True` loop goes on
                raise

    task = asyncio.create_task(stubborn())
    await looping.wait()
    async with asyncio.timeout(10) as deadline:  # only a guard: the re-cancel comes after 1 s
        await cancel_and_wait(task)
    assert not deadline.expired(), "cancel_and_wait waited until something else cancelled it"
    assert task.cancelled() and cancels == 2


async def test_cancel_and_wait_of_none_and_of_a_finished_task() -> None:
    await cancel_and_wait(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait(done)
    assert done.done() and not done.cancelled()
