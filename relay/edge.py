"""Slow-loris guards of the relay's listening port.

Theory of operation. A connection is *pre-authentication* from TCP accept
(``memorybio`` engine) or from the end of the TLS handshake (``asyncio``
engine, whose handshake is inside asyncio) until its first request head is
complete. While it is, it holds one slot of the :class:`EdgeGate`; a
connection that finds the gate full is closed at once. :class:`HeadGuard`
sits between the TLS transport and aiohttp's protocol until the first head is
complete: it closes the connection when the head is not complete within
``head_timeout`` or grows past ``max_head_bytes``, then steps out of the way
(``transport.set_protocol``) so the hot path has no extra hop. From there the
endpoints' handshake timeout bounds authentication and the upgrade.

With an :class:`UpgradeRouter` (``listener.transport: native``) the guard
holds the first head's bytes instead of feeding aiohttp as they come; once
the head is complete, a websocket upgrade on a connect path goes to the
router (relay/native_upgrade.py: aiohttp never sees that connection) and
anything else to aiohttp, bytes and all. The same timeout, size bound and
gate slot apply to both.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Protocol

from tunnel import PreAuthGate, PreAuthSlot

log = logging.getLogger("relay")

# Both spellings aiohttp's parser accepts as the end of a head.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


class EdgeStats:
    """Counters of the listener, exposed on ``/metrics`` (relay/metrics.py)."""

    def __init__(self) -> None:
        #: connections closed by a guard, by reason
        self.closed: Counter[str] = Counter()


class EdgeGate(PreAuthGate):
    """The listener's pre-authentication gate, carrying its counters so that
    the guards holding it count the connections they close."""

    def __init__(self, limit: int, stats: EdgeStats) -> None:
        super().__init__(limit, log, "edge", "limits.max_preauth_connections")
        self.stats = stats


def peer_label(transport: asyncio.BaseTransport) -> str:
    """``'host:port'`` of the peer, quoted for a log line."""
    peer = transport.get_extra_info("peername")
    return repr(f"{peer[0]}:{peer[1]}") if isinstance(peer, tuple) and len(peer) >= 2 else "'-'"


class UpgradeRouter(Protocol):
    """Takes some connections away from aiohttp at their first head."""

    def wants(self, head: bytes) -> bool:
        """Whether the connection whose first head is ``head`` is the router's."""
        ...

    def adopt(self, transport: asyncio.Transport, received: bytes) -> None:
        """Take ``transport`` over (``set_protocol``); ``received``: every byte
        read so far, the head first."""
        ...


class HeadGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol until the first request head is complete (module docstring).

    Args:
        inner: aiohttp's protocol (``runner.server()``).
        gate: The pre-authentication gate.
        slot: The slot taken at TCP accept; None: take one in ``connection_made``.
        head_timeout: Seconds for the first head.
        max_head_bytes: Largest first head.
        router: Where a connect upgrade goes instead of aiohttp; None: all to aiohttp.
    """

    def __init__(self, inner: asyncio.Protocol, gate: EdgeGate, slot: PreAuthSlot | None,
                 head_timeout: float, max_head_bytes: int, router: UpgradeRouter | None = None) -> None:
        self.inner = inner
        self.router = router
        # With a router: the bytes of the first head, held until it is complete.
        self._held: bytearray | None = bytearray() if router is not None else None
        self.gate = gate
        self.slot = slot
        self.head_timeout = head_timeout
        self.max_head_bytes = max_head_bytes
        self.transport: asyncio.Transport | None = None
        self._seen = 0
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._forwarding = False
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.slot is None:
            self.slot = self.gate.admit()
            if self.slot is None:
                transport.abort()
                return
        self._timer = asyncio.get_running_loop().call_later(self.head_timeout, self._timed_out)
        if self._held is None:
            self._forwarding = True
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._held is not None:
            self._hold(data)
            return
        if not self._forwarding or self._closing or self.transport is None:
            return
        window = self._tail + data
        if any(end in window for end in _HEAD_ENDS):
            self._head_completed()
        else:
            self._seen += len(data)
            self._tail = window[-3:]
            if self._seen > self.max_head_bytes:
                self._close("head too large", f"first request head over {self.max_head_bytes} bytes")
                return
        self.inner.data_received(data)

    def _hold(self, data: bytes) -> None:
        """Collect the first head; route the connection once it is complete."""
        held = self._held
        if held is None or self._closing or self.transport is None:
            return
        start = max(0, len(held) - 3)
        held += data
        end = -1
        for marker in _HEAD_ENDS:
            found = held.find(marker, start)
            if found >= 0 and (end < 0 or found + len(marker) < end):
                end = found + len(marker)
        if end < 0:
            if len(held) > self.max_head_bytes:
                self._close("head too large", f"first request head over {self.max_head_bytes} bytes")
            return
        self._cancel()
        self._held = None
        transport = self.transport
        received = bytes(held)
        assert self.router is not None
        if self.router.wants(received[:end]):
            self.router.adopt(transport, received)
            return
        self._forwarding = True
        self.inner.connection_made(transport)
        transport.set_protocol(self.inner)
        self.inner.data_received(received)

    def _head_completed(self) -> None:
        self._cancel()
        if self.transport is not None:
            # Step out: aiohttp's protocol gets the transport's callbacks directly.
            self.transport.set_protocol(self.inner)

    def _timed_out(self) -> None:
        self._timer = None
        self._close("head timeout", f"first request head not complete after {self.head_timeout:g}s")

    def _close(self, reason: str, detail: str) -> None:
        self._cancel()
        self._closing = True
        self.gate.stats.closed[reason] += 1
        if self.transport is not None:
            log.info("edge closed peer=%s reason=%r detail=%r", peer_label(self.transport), reason, detail)
            self.transport.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.slot is not None:
            self.slot.release()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self._forwarding else None

    def pause_writing(self) -> None:
        if self._forwarding:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._forwarding:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.transport = None
        if self._forwarding:
            self._forwarding = False
            self.inner.connection_lost(exc)
