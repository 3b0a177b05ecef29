"""Which agent session is live for which cluster.

``SessionDirectory`` is the interface; ``LocalDirectory`` the in-process
default. With several relay replicas a shared store will record which replica
holds which cluster; the session objects themselves always stay owned by the
replica that accepted them (ARCHITECTURE.md, growing past one machine).
"""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar

S = TypeVar("S")


class SessionDirectory(Protocol[S]):
    """Maps cluster ids to the newest authenticated agent session."""

    def register(self, cluster_id: str, session: S) -> S | None:
        """Make ``session`` the live one; returns the one it replaces, if any."""
        ...

    def unregister(self, cluster_id: str, session: S) -> bool:
        """Forget ``session`` if it is still the live one; True if it was."""
        ...

    def get(self, cluster_id: str) -> S | None: ...

    def is_present(self, cluster_id: str) -> bool:
        """Whether a live agent session of ``cluster_id`` exists (on any
        replica, once presence is shared): what ``connectivityStatus`` reports."""
        ...

    async def wait_for(self, cluster_id: str, timeout: float, *, not_this: S | None = None) -> S | None:
        """The live session, waiting up to ``timeout`` seconds for one (other
        than ``not_this``) to register; None when none came."""
        ...

    def sessions(self) -> list[tuple[str, S]]: ...


class LocalDirectory(Generic[S]):
    """In-process ``SessionDirectory``; call only from the event loop."""

    def __init__(self) -> None:
        self._live: dict[str, S] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def _notify(self, cluster_id: str) -> None:
        event = self._changed.pop(cluster_id, None)
        if event is not None:
            event.set()

    def register(self, cluster_id: str, session: S) -> S | None:
        previous = self._live.get(cluster_id)
        self._live[cluster_id] = session
        self._notify(cluster_id)
        return previous if previous is not session else None

    def unregister(self, cluster_id: str, session: S) -> bool:
        if self._live.get(cluster_id) is session:
            del self._live[cluster_id]
            return True
        return False

    def get(self, cluster_id: str) -> S | None:
        return self._live.get(cluster_id)

    def is_present(self, cluster_id: str) -> bool:
        return cluster_id in self._live

    async def wait_for(self, cluster_id: str, timeout: float, *, not_this: S | None = None) -> S | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            live = self._live.get(cluster_id)
            if live is not None and live is not not_this:
                return live
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            event = self._changed.setdefault(cluster_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None

    def sessions(self) -> list[tuple[str, S]]:
        return list(self._live.items())
