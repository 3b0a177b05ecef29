"""Open client streams live only as long as the credential that opened them.

The router authorises a stream once, at OPEN; an ``exec``, ``port-forward``
or ``logs -f`` stream may then run for hours. ``LiveStreams`` keeps every
routed stream with the principal and scope it was authorised for and
re-checks them: every ``authorization.recheck_seconds`` (default 30 s, at most
60 s), at once when a role assignment changes (:meth:`LiveStreams.wake`), and
exactly when the earliest token expires. A stream whose principal lost its
role is reset with ``FORBIDDEN "access revoked"``; one whose token expired with
``FORBIDDEN "token expired"``. The reset crosses the router's bridge, so the
agent side ends as well. Other principals' streams are untouched.

The checking task runs only while streams are open, so an idle relay has none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from identity import Principal
from relay.background import cancel_and_wait
from tunnel import ErrorCode, TunnelStream

log = logging.getLogger("relay")

ACCESS_REVOKED = "access revoked"
TOKEN_EXPIRED = "token expired"
# A wake-up earlier than this after the last one is merged into it: a burst of
# role changes costs one pass, not one per change.
MIN_PASS_INTERVAL = 0.05


@dataclass(eq=False, slots=True)
class LiveStream:
    """One routed stream: who opened it, for which scope, and both legs
    (slotted: one per idle routed stream, see relay/router.py)."""

    principal: Principal
    scope: str
    cluster: str
    client: TunnelStream
    upstream: TunnelStream


class LiveStreams:
    """Routed streams and the periodic re-authorisation of their principals.

    Args:
        recheck_seconds: longest time a revoked principal's stream stays open.
        allowed: ``async (principal, scope) -> bool``: may this principal still
            connect at this scope (the router's own check).
        on_ended: called with the outcome (``"revoked"`` / ``"expired"``) of
            every stream ended here (metrics).
        clock: wall clock, seconds since the epoch (token expiry).
    """

    def __init__(self, recheck_seconds: float, allowed: Callable[[Principal, str], Awaitable[bool]],
                 on_ended: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.recheck_seconds = recheck_seconds
        self._allowed = allowed
        self._on_ended = on_ended
        self._clock = clock
        self._streams: set[LiveStream] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Wall time of the pass the task waits for, and whether a wake-up asks
        # for a pass (role change) rather than a re-plan (earlier expiry).
        self._planned_at = float("inf")
        self._check_requested = False
        #: completed re-authorisation passes (tests wait on this, never on sleeps)
        self.passes = 0

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[LiveStream]:
        return iter(list(self._streams))

    def add(self, principal: Principal, scope: str, cluster: str, client: TunnelStream,
            upstream: TunnelStream) -> LiveStream:
        """Track a stream the router just accepted; call :meth:`discard` when it ends."""
        live = LiveStream(principal, scope, cluster, client, upstream)
        self._streams.add(live)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        elif principal.expires_at < self._planned_at:
            self._wake.set()  # expires before the pass the task is waiting for: re-plan
        return live

    def discard(self, live: LiveStream) -> None:
        """Forget a stream that ended."""
        self._streams.discard(live)
        if not self._streams:
            self._wake.set()  # lets the task see it has nothing left and end

    def wake(self) -> None:
        """Re-check every open stream now (a role assignment changed)."""
        self._check_requested = True
        self._wake.set()

    async def close(self) -> None:
        """Stop the checking task (relay shutdown)."""
        await cancel_and_wait(self._task)
        self._task = None

    async def check_now(self) -> int:
        """Re-authorise every open stream; reset those whose credential no
        longer allows them. Returns how many were reset."""
        now = self._clock()
        verdicts: dict[tuple[int, str], bool] = {}
        ended = 0
        for live in list(self._streams):
            if live not in self._streams:  # ended while a verdict was awaited
                continue
            if live.principal.expires_at <= now:
                outcome, reason = "expired", TOKEN_EXPIRED
            else:
                key = (id(live.principal), live.scope)
                if key not in verdicts:
                    verdicts[key] = await self._allowed(live.principal, live.scope)
                if verdicts[key]:
                    continue
                outcome, reason = "revoked", ACCESS_REVOKED
            self._end(live, outcome, reason)
            ended += 1
        self.passes += 1
        return ended

    def _end(self, live: LiveStream, outcome: str, reason: str) -> None:
        self._streams.discard(live)
        live.client.reset(ErrorCode.FORBIDDEN, reason)
        live.upstream.reset(ErrorCode.FORBIDDEN, reason)  # no-op once the bridge passed it on
        log.info("stream ended reason=%r principal=%r cluster=%s check=%d", reason,
                 live.principal.name, live.cluster, self.passes + 1)
        if self._on_ended is not None:
            self._on_ended(outcome)

    def _next_wait(self) -> float:
        now = self._clock()
        earliest = min((s.principal.expires_at for s in self._streams), default=float("inf"))
        wait = max(MIN_PASS_INTERVAL, min(self.recheck_seconds, earliest - now))
        self._planned_at = now + wait
        return wait

    async def _run(self) -> None:
        while self._streams:
            try:
                await asyncio.wait_for(self._wake.wait(), self._next_wait())
                due = self._check_requested or self._clock() >= self._planned_at
            except TimeoutError:
                due = True
            self._wake.clear()
            if due and self._streams:
                self._check_requested = False
                await self.check_now()
