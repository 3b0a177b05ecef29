"""A session's keepalive: PING after silence, a dead peer after ``timeout``.

Theory of operation. The dialling side (an agent, arc-proxy) PINGs every
``interval``, whatever else goes on: the wire is then never silent for longer
than that (middleboxes' idle timeouts). The accepting side (the relay) PINGs
only a peer silent (no PING from it) for ``ACCEPTOR_SILENCE`` intervals: a
peer that pings us is alive, and skipping our own PING halves the PING/PONG
frames of thousands of idle agents. A PING unanswered within ``timeout``
means the peer is dead (``on_dead``). Either way one ``Timer`` of the loop's
wheel (aio_timers.py) is the whole cost: no task, and nothing at all happens
between two deadlines, however much traffic the session carries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tunnel.aio_timers import timer_wheel

__all__ = ["ACCEPTOR_SILENCE", "Keepalive"]

# The accepting side pings a peer silent for this many intervals. Not 1: the
# dialler's PINGs arrive every interval plus its timer's lateness (up to 1 s,
# aio_timers.py) plus a transit, so a bound of exactly one interval would race
# each of them and double the PINGs of every idle agent. 1.5 stays within
# what the former per-session loop allowed (a window of one interval without
# a PING, seen up to one interval late: at most 2).
ACCEPTOR_SILENCE = 1.5


class Keepalive:
    """The keepalive of one session; ``start()`` once the session runs.

    Args:
        interval: Seconds between PINGs (the dialler) or of silence before one
            (the accepting side, times ``ACCEPTOR_SILENCE``); 0 turns it off.
        timeout: Seconds a PING may go unanswered; 0 waits forever.
        is_client: True on the dialling side (which always pings).
        send_ping: Queue and send a PING; returns its payload.
        on_dead: Called once when a PING went unanswered for ``timeout``.

    The session reports the peer's PINGs (``their_ping``) and every PONG
    (``pong``), and calls ``stop()`` when it closes.
    """

    __slots__ = (
        "_interval", "_is_client", "_loop", "_on_dead", "_our_ping", "_our_ping_at", "_send_ping",
        "_their_ping_at", "_timeout", "_timer",
    )

    def __init__(self, interval: float, timeout: float, *, is_client: bool,
                 send_ping: Callable[[], bytes], on_dead: Callable[[], None]) -> None:
        self._interval = interval
        self._timeout = timeout
        self._is_client = is_client
        self._send_ping = send_ping
        self._on_dead = on_dead
        self._loop = asyncio.get_running_loop()
        self._timer = timer_wheel().timer(self._on_due)
        self._our_ping: bytes | None = None  # payload of our PING awaiting its PONG
        self._our_ping_at = 0.0
        self._their_ping_at = self._loop.time()  # start: the handshake counts as hearing from it

    def start(self) -> None:
        """Arm the first deadline (no-op when ``interval`` is 0)."""
        if self._interval > 0:
            self._timer.schedule(self._next_delay())

    def stop(self) -> None:
        """Disarm for good (the session is closing)."""
        self._interval = 0
        self._our_ping = None
        self._timer.cancel()

    def their_ping(self) -> None:
        """The peer sent a PING (the core answers it): it is alive."""
        self._their_ping_at = self._loop.time()

    def pong(self, payload: bytes) -> float | None:
        """A PONG came: if it answers our keepalive PING, return the round
        trip in seconds (and arm the next deadline), else None."""
        if payload != self._our_ping:
            return None
        self._our_ping = None
        rtt = self._loop.time() - self._our_ping_at
        if self._interval > 0:
            self._timer.schedule(self._next_delay())
        return rtt

    def _next_delay(self) -> float:
        if self._is_client:
            return self._interval
        quiet_until = self._their_ping_at + self._interval * ACCEPTOR_SILENCE
        return max(self._interval, quiet_until - self._loop.time())

    def _on_due(self) -> None:
        if self._interval <= 0:
            return
        if self._our_ping is not None:
            self._interval = 0  # once
            self._on_dead()
            return
        now = self._loop.time()
        if not self._is_client:
            quiet_until = self._their_ping_at + self._interval * ACCEPTOR_SILENCE
            if quiet_until > now:
                self._timer.schedule(quiet_until - now)
                return
        self._our_ping_at = now
        payload = self._send_ping()
        if self._interval > 0:  # not stopped meanwhile (the send found the connection lost)
            self._our_ping = payload
            if self._timeout > 0:
                self._timer.schedule(self._timeout)
