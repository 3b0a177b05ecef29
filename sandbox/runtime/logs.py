"""Per-container log buffer: a bounded ring of timestamped lines that any
number of followers can tail.

Periodic lines (annotation ``sandbox.cluster-connect.dev/log-every``) are not
produced by a background task: they are materialised on demand from the
container's start time, so a runtime needs no event loop until someone reads.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime

# Bounded memory: kubelet rotates at 10 MiB; a sandbox keeps far less.
MAX_LOG_BYTES = 2 * 1024 * 1024
# Followers re-check this often even when nothing wakes them (stop, ticks).
FOLLOW_POLL_SECONDS = 1.0


def rfc3339nano(ts_ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing fractional zeros trimmed."""
    secs, nanos = divmod(ts_ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{nanos:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


class LogBuffer:
    """The log of one container."""

    def __init__(self, max_bytes: int = MAX_LOG_BYTES, every: float | None = None,
                 tick_text: str = "tick") -> None:
        self._entries: deque[tuple[int, int, bytes]] = deque()  # (seq, ts_ns, line)
        self._next_seq = 0
        self._bytes = 0
        self._max_bytes = max_bytes
        self._start_ns = time.time_ns()
        self._every_ns = int(every * 1e9) if every else None
        self._ticks_done = 0
        self._tick_text = tick_text
        self._pending = b""  # partial line written without a newline yet
        self._wakeup: asyncio.Event | None = None
        self.closed = False

    def set_every(self, every: float | None) -> None:
        """Change the period of numbered lines (None stops them)."""
        self._catch_up()
        new = int(every * 1e9) if every else None
        if new != self._every_ns:
            self._every_ns = new
            self._start_ns = time.time_ns()
            self._ticks_done = 0

    def _catch_up(self) -> None:
        if not self._every_ns or self.closed:
            return
        now = time.time_ns()
        while self._start_ns + (self._ticks_done + 1) * self._every_ns <= now:
            self._ticks_done += 1
            ts = self._start_ns + self._ticks_done * self._every_ns
            self._add(ts, f"{self._tick_text} {self._ticks_done}\n".encode())

    def _next_tick_in(self) -> float | None:
        if not self._every_ns:
            return None
        due = self._start_ns + (self._ticks_done + 1) * self._every_ns
        return max(0.0, (due - time.time_ns()) / 1e9)

    def _add(self, ts_ns: int, line: bytes) -> None:
        self._entries.append((self._next_seq, ts_ns, line))
        self._next_seq += 1
        self._bytes += len(line)
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            self._bytes -= len(self._entries.popleft()[2])
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def write(self, data: bytes) -> None:
        """Append output; complete lines become entries immediately."""
        self._catch_up()
        data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()
        now = time.time_ns()
        for line in lines:
            self._add(now, line + b"\n")

    def flush(self) -> None:
        """Turn a pending partial line into an entry (the writer finished)."""
        if self._pending:
            self._add(time.time_ns(), self._pending + b"\n")
            self._pending = b""

    def close(self) -> None:
        """End every follower."""
        self.flush()
        self.closed = True
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest entry (-1 when empty)."""
        self._catch_up()
        return self._next_seq - 1

    def snapshot(self, after_seq: int = -1) -> list[tuple[int, int, bytes]]:
        """Entries with a sequence number above ``after_seq``."""
        self._catch_up()
        return [e for e in self._entries if e[0] > after_seq]

    async def wait(self, timeout: float) -> None:
        """Wait for a new entry, a close, the next tick or ``timeout``."""
        nxt = self._next_tick_in()
        if nxt is not None:
            timeout = min(timeout, nxt + 0.001)
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        event = self._wakeup
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    async def stream(self, follow: bool = False, tail_lines: int | None = None,
                     since_seconds: int | None = None, timestamps: bool = False,
                     limit_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Yield log lines the way kubelet serves ``pods/log``."""
        entries = self.snapshot()
        if since_seconds is not None:
            floor = time.time_ns() - since_seconds * 1_000_000_000
            entries = [e for e in entries if e[1] >= floor]
        if tail_lines is not None:
            entries = entries[-tail_lines:] if tail_lines > 0 else []
        last = entries[-1][0] if entries else self._next_seq - 1
        remaining = limit_bytes
        while True:
            for _seq, ts, line in entries:
                out = (rfc3339nano(ts).encode() + b" " + line) if timestamps else line
                if remaining is not None:
                    out = out[:remaining]
                    remaining -= len(out)
                if out:
                    yield out
                if remaining is not None and remaining <= 0:
                    return
            if entries:
                last = entries[-1][0]
            if not follow or self.closed:
                return
            await self.wait(FOLLOW_POLL_SECONDS)
            entries = self.snapshot(last)
