"""Container logs: ring buffer, tail/since/limit/timestamps, follow, ticks."""

from __future__ import annotations

import asyncio
import re

from sandbox.runtime import PodRuntime
from sandbox.runtime.logs import LogBuffer, rfc3339nano
from sandbox.runtime.pod import parse_duration
from tests.support.waits import until


def _pod(every: str | None = None) -> dict:
    ann = {"sandbox.cluster-connect.dev/log-every": every} if every else {}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": ann},
            "spec": {"containers": [{"name": "c", "image": "img"}]}}


async def _collect(it: object) -> list[bytes]:
    return [x async for x in it]  # type: ignore[attr-defined]


def test_rfc3339nano_trims_trailing_zeros_like_go() -> None:
    """Go's RFC3339Nano drops trailing fractional zeros and a bare dot."""
    assert rfc3339nano(1_700_000_000_123_450_000) == "2023-11-14T22:13:20.12345Z"
    assert rfc3339nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def test_parse_duration_accepts_go_durations() -> None:
    """1s, 500ms, 1m30s parse; junk does not."""
    assert parse_duration("1s") == 1.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("soon") is None


async def test_log_tail_limit_and_timestamps() -> None:
    """tail_lines, limit_bytes and timestamps shape the output."""
    buf = LogBuffer()
    buf.write(b"one\ntwo\nthree\n")
    assert await _collect(buf.stream(tail_lines=2)) == [b"two\n", b"three\n"]
    assert b"".join(await _collect(buf.stream(limit_bytes=6))) == b"one\ntw"
    stamped = await _collect(buf.stream(timestamps=True, tail_lines=1))
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z three\n", stamped[0])
    assert await _collect(buf.stream(since_seconds=60)) == [b"one\n", b"two\n", b"three\n"]
    assert await _collect(buf.stream(tail_lines=0)) == []


async def test_log_ring_buffer_stays_bounded() -> None:
    """Old lines are dropped past max_bytes."""
    buf = LogBuffer(max_bytes=100)
    for i in range(100):
        buf.write(f"line {i:03d}\n".encode())
    lines = await _collect(buf.stream())
    assert sum(map(len, lines)) <= 100
    assert lines[-1] == b"line 099\n"


async def test_log_follow_sees_new_lines_and_ends_at_close() -> None:
    """A follower gets lines written later and returns once the log closes."""
    buf = LogBuffer()
    buf.write(b"first\n")
    got: list[bytes] = []

    async def follow() -> None:
        async for line in buf.stream(follow=True):
            got.append(line)

    task = asyncio.create_task(follow())
    await until(lambda: got == [b"first\n"], "the follower to read what was there")
    buf.write(b"second\npartial")
    await until(lambda: len(got) == 2, "the follower to get the line written later")
    buf.close()
    await asyncio.wait_for(task, 5)
    assert got == [b"first\n", b"second\n", b"partial\n"]


async def test_runtime_log_every_produces_numbered_lines_while_following() -> None:
    """The log-every annotation adds ``tick N`` lines; stop() ends followers."""
    rt = PodRuntime(_pod("50ms"))
    got: list[bytes] = []

    async def follow() -> None:
        async for line in rt.log_stream("c", follow=True):
            got.append(line)
            if len(got) == 3:
                rt.stop()

    await asyncio.wait_for(follow(), 5)
    assert got == [b"container c started (image img)\n", b"tick 1\n", b"tick 2\n"]


async def test_runtime_update_adds_containers_and_changes_period() -> None:
    """update() starts new containers and applies a new log period."""
    rt = PodRuntime(_pod())
    pod = _pod("1h")
    pod["spec"]["containers"].append({"name": "d", "image": "img2"})
    rt.update(pod)
    assert list(rt.containers) == ["c", "d"]
    assert await _collect(rt.log_stream("d")) == [b"container d started (image img2)\n"]
    rt.stop()
    assert await _collect(rt.log_stream("c", follow=True)) == [
        b"container c started (image img)\n"]
