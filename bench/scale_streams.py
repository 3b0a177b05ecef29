"""Client sessions for ``bench.scale``: what ``arc-proxy`` holds (a tunnel
session on ``/client/v1/connect`` with a cluster-user's OIDC token), used to
open idle streams and to measure fairness.

Streams speak the simulated agents' bench protocol (bench/scale_agents.py):
``H`` holds a stream idle, ``S`` + 8-byte length makes the agent send that
many bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.scale_agents import HOLD, SOURCE
from tunnel import (
    StreamRefused,
    StreamReset,
    TunnelClosed,
    TunnelSession,
    TunnelStream,
    ws_connect_kwargs,
)

OPEN_TIMEOUT = 30.0
# Stream OPENs in flight at once while opening many idle streams.
OPEN_CONCURRENCY = 64


@dataclass
class ClientSessions:
    """Client tunnel sessions to one relay; ``close()`` ends them all."""

    http: aiohttp.ClientSession
    relay_url: str
    sessions: list[tuple[TunnelSession, asyncio.Task[None]]] = field(default_factory=list)

    async def open(self, token: str, name: str) -> TunnelSession:
        ws = await self.http.ws_connect(self.relay_url + "/client/v1/connect",
                                        headers={"Authorization": f"Bearer {token}"}, **ws_connect_kwargs())
        session = TunnelSession(ws, is_client=True, name=name)
        self.sessions.append((session, asyncio.ensure_future(session.run())))
        return session

    async def close(self) -> None:
        for session, task in self.sessions:
            with contextlib.suppress(TunnelClosed, OSError):
                await session.close()
            task.cancel()
        await asyncio.gather(*(task for _, task in self.sessions), return_exceptions=True)
        self.sessions.clear()


async def open_idle_streams(sessions: Sequence[TunnelSession], targets: Sequence[bytes],
                            count: int) -> list[TunnelStream]:
    """Open ``count`` streams round-robin over ``sessions`` and ``targets``, each
    told to hold (``H``); returns those the relay and agent accepted."""
    slots = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(i: int) -> TunnelStream | None:
        async with slots:
            try:
                stream = await sessions[i % len(sessions)].open_stream(targets[i % len(targets)],
                                                                      timeout=OPEN_TIMEOUT)
                await stream.write(HOLD)
            except (StreamRefused, StreamReset, TunnelClosed):
                return None
            return stream

    opened = await asyncio.gather(*(one(i) for i in range(count)))
    return [s for s in opened if s is not None]


async def close_streams(streams: Sequence[TunnelStream]) -> None:
    for stream in streams:
        stream.reset()
    await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


async def source_stream(session: TunnelSession, target: bytes, length: int) -> TunnelStream:
    """A stream whose agent sends ``length`` bytes then FIN."""
    stream = await session.open_stream(target, timeout=OPEN_TIMEOUT)
    await stream.write(SOURCE + length.to_bytes(8, "big"))
    return stream


async def timed_download(session: TunnelSession, target: bytes, length: int, timeout: float) -> float:
    """Read ``length`` bytes from a source stream; bytes per second (counting
    what arrived when ``timeout`` ends the transfer early)."""
    stream = await source_stream(session, target, length)
    received = 0
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while data := await stream.read():
                received += len(data)
    except TimeoutError:
        pass
    except (StreamReset, TunnelClosed):
        pass
    elapsed = time.monotonic() - started
    stream.reset()
    await stream.aclose()
    return received / elapsed if elapsed > 0 else 0.0
