"""Byte transports a SPDY session can run over: the upgraded TCP/TLS
connection itself, or binary websocket messages (port-forward tunnelling)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

# Large reads keep per-call overhead negligible at tens of MB/s.
READ_SIZE = 256 * 1024


class ByteTransport(Protocol):
    """A reliable ordered byte pipe."""

    async def read(self) -> bytes:
        """Next bytes received; b"" at EOF."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes, waiting while the peer is slow."""
        ...

    async def close(self) -> None:
        """Flush and close."""
        ...


class StreamTransport:
    """The upgraded connection's asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if data and not self._writer.is_closing():
            self._writer.write(data)
            await self._writer.drain()

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()
