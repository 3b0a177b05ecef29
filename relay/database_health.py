"""Whether the relay's database answers, for ``/readyz``.

A readiness probe must not hit the database on every request (a load
balancer probing every second from many nodes would add up, and a stalled
database would stall the probe): a background task pings every
``PING_INTERVAL_SECONDS`` with a ``PING_TIMEOUT_SECONDS`` timeout and the
check reads the last answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from relay.background import cancel_and_wait

log = logging.getLogger("relay")

PING_INTERVAL_SECONDS = 5.0
PING_TIMEOUT_SECONDS = 2.0


class DatabaseHealth:
    """The last answer of a periodic database ping.

    Args:
        ping: answers True when the database works (``ClusterRegistry.ping``).
        interval: seconds between pings.
        timeout: a ping not answered within this counts as a failure.
    """

    def __init__(self, ping: Callable[[], Awaitable[bool]],
                 interval: float = PING_INTERVAL_SECONDS, timeout: float = PING_TIMEOUT_SECONDS) -> None:
        self._ping = ping
        self.interval = interval
        self.timeout = timeout
        self.reachable = False
        #: completed pings (tests wait on this, never on sleeps)
        self.pings = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Ping once (so readiness is known before serving), then periodically."""
        await self.check()
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def check(self) -> bool:
        """Ping now; record and return the answer."""
        try:
            async with asyncio.timeout(self.timeout):
                ok = await self._ping()
        except TimeoutError:
            ok = False
        except Exception as exc:  # any driver error means "not reachable", never a crash of the loop
            log.debug("database ping failed error=%s", type(exc).__name__)
            ok = False
        if ok != self.reachable and self.pings:
            log.warning("database %s", "reachable again" if ok else
                        f"unreachable: no answer within {self.timeout:g} s or an error")
        self.reachable = ok
        self.pings += 1
        return ok

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    def problem(self) -> str | None:
        """None when the last ping answered, else the readiness failure."""
        return None if self.reachable else "database unreachable"
