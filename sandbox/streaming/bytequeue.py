"""An unbounded-by-type, bounded-by-caller byte queue between a protocol
reader and the code consuming one stream (exec stdin, a port-forward data
stream). The reader checks ``size`` and waits with ``wait_below`` so one slow
consumer bounds memory instead of growing it without limit.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ByteQueue:
    """Chunks in, bytes out; ``b""`` means EOF."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    def feed(self, data: bytes) -> None:
        """Add bytes (ignored after EOF: a reset stream may still get DATA)."""
        if data and not self.eof:
            self._chunks.append(data)
            self.size += len(data)
            self._readable.set()
            self._drained.clear()

    def feed_eof(self) -> None:
        self.eof = True
        self._readable.set()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered when n < 0); b"" once at EOF."""
        while not self._chunks:
            if self.eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        if n < 0 or n >= self.size:
            data = b"".join(self._chunks)
            self._chunks.clear()
        else:
            parts: list[bytes] = []
            want = n
            while want > 0:
                chunk = self._chunks.popleft()
                if len(chunk) > want:
                    parts.append(chunk[:want])
                    self._chunks.appendleft(chunk[want:])
                    want = 0
                else:
                    parts.append(chunk)
                    want -= len(chunk)
            data = b"".join(parts)
        self.size -= len(data)
        if self.size == 0:
            self._drained.set()
        return data

    async def readline(self) -> bytes:
        """One line including ``\\n``; the rest at EOF; b"" at EOF."""
        while True:
            joined = b"".join(self._chunks)
            idx = joined.find(b"\n")
            if idx >= 0 or (self.eof and joined):
                cut = idx + 1 if idx >= 0 else len(joined)
                self._chunks.clear()
                if cut < len(joined):
                    self._chunks.append(joined[cut:])
                self.size = len(joined) - cut
                if self.size == 0:
                    self._drained.set()
                return joined[:cut]
            if self.eof:
                return b""
            if joined:
                self._chunks.clear()
                self._chunks.append(joined)
            self._readable.clear()
            await self._readable.wait()

    async def wait_drained(self) -> None:
        """Until the consumer has read everything buffered."""
        await self._drained.wait()
