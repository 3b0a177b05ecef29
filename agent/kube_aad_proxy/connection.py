"""One kubectl connection: request heads through the header policy, bodies
and responses byte for byte, upgrades spliced.

Theory of operation. ``data_received`` feeds the :class:`RequestReader`; its
events go into ``_backlog`` and are handled in order by ``_drain``, which
runs synchronously on the hot path (upstream connected, token cached or not
needed). When a head needs waiting for (first upstream connect, a token
validation) ``_drain`` starts one task, reading from kubectl is paused, and the
task resumes ``_drain`` when done, so events never overtake each other.
Responses come back through the :class:`ResponseReader` in request order.
Anything refused is answered with a Status after every earlier response and
the connection is closed, so nothing unparsed or undecided is ever forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING

from agent.kube_aad_proxy.audit import audit
from agent.kube_aad_proxy.policy import Forward, Refuse, Validate
from agent.kube_aad_proxy.requests import (
    BodyReceived,
    HeadReceived,
    RequestEvent,
    RequestReader,
)
from agent.kube_aad_proxy.responses import (
    Exchange,
    ResponseDone,
    ResponseReader,
    Upgraded,
)
from agent.kube_aad_proxy.status import status_response
from agent.kube_aad_proxy.upstream import UpstreamProtocol, open_upstream

if TYPE_CHECKING:
    from agent.kube_aad_proxy.proxy import KubeAadProxy
    from tunnel import PreAuthSlot

log = logging.getLogger("agent.kube_aad_proxy")


class ProxyConnection(asyncio.Protocol):
    """The downstream (kubectl) side of one proxied connection."""

    def __init__(self, proxy: KubeAadProxy, slot: PreAuthSlot | None = None) -> None:
        self.proxy = proxy
        # Held until the first request head is complete (tunnel.PreAuthGate).
        self._slot = slot
        self.config = proxy.config
        self.transport: asyncio.Transport | None = None
        self._reader = RequestReader(self.config.max_head_bytes)
        self._pending: deque[Exchange] = deque()
        self._responses = ResponseReader(self._pending, self.config.max_head_bytes)
        self._backlog: deque[RequestEvent] = deque()
        self._up: UpstreamProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused: set[str] = set()
        self._refusal: tuple[bytes, Exchange] | None = None
        self._spliced = False
        self._closing = False
        self.last_activity = time.monotonic()
        # When the head being read began (the first: at the end of TLS); None
        # between requests. The head timeout counts from here, not from the last
        # byte, so a trickle of bytes cannot keep a head open.
        self._head_started: float | None = None

    @property
    def upstream_paused(self) -> bool:
        """True while reading from the API server is paused because kubectl's
        side of this connection is full (back-pressure)."""
        up = self._up
        return up is not None and up.transport is not None and not up.transport.is_reading()

    # -- downstream transport callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(self.proxy.write_high, self.proxy.write_low)
        self.proxy.connections.add(self)
        self._head_started = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self._spliced:
            if self._up is not None and self._up.transport is not None:
                self._up.transport.write(data)
            return
        if self._closing or self._refusal is not None:
            return
        events = self._reader.feed(data)
        if events:
            if self._slot is not None:
                self._slot.release()  # a whole head arrived: no longer pre-authentication
                self._slot = None
            self._head_started = self.last_activity if self._reader.partial_head else None
        elif self._head_started is None and self._reader.partial_head:
            self._head_started = self.last_activity
        self._backlog.extend(events)
        if self._reader.holding:
            self._pause("upgrade")  # held bytes stay bounded until the 101 (or not)
        if self._task is None:
            self._drain()

    def eof_received(self) -> bool:
        return False  # TLS has no half-close in asyncio; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._closing = True
        if self._slot is not None:
            self._slot.release()
            self._slot = None
        self.proxy.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        for ex in self._pending:
            self._audit(ex, 0)  # the client went away before its answer
        self._pending.clear()
        if self._up is not None and self._up.transport is not None:
            self._up.transport.close()

    def pause_writing(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.resume_reading()

    # -- request side ----------------------------------------------------------------

    def _drain(self) -> None:
        """Handle backlog events in order until empty or one must wait."""
        while self._backlog and not self._closing and self._refusal is None:
            ev = self._backlog[0]
            if isinstance(ev, BodyReceived):
                self._backlog.popleft()
                self._send_up(ev.data)
            elif isinstance(ev, HeadReceived):
                decision = self.proxy.policy.decide(ev.head)
                if isinstance(decision, Validate) or (self._up is None and isinstance(decision, Forward)):
                    self._pause("wait")
                    self._task = asyncio.get_running_loop().create_task(self._prepare(ev, decision))
                    return
                self._backlog.popleft()
                self._forward(ev, decision)
            else:
                self._backlog.popleft()
                self._refuse(ev.status, ev.message, Exchange("-", "-", "-", time.perf_counter(), False, False))
        if self._refusal is None and not self._reader.holding:
            self._resume("wait")

    async def _prepare(self, ev: HeadReceived, decision: Forward | Refuse | Validate) -> None:
        """The slow path of one head: validate the token, open the upstream."""
        try:
            if isinstance(decision, Validate):
                decision = await self.proxy.policy.finish(ev.head, decision)
            if isinstance(decision, Forward) and self._up is None:
                try:
                    up = await open_upstream(self.config, self.proxy.upstream_ssl, self)
                    self.proxy.health.record(True)
                    if self._closing:  # closed (proxy stop) while we connected
                        if up.transport is not None:
                            up.transport.abort()
                        return
                    self._up = up
                except (OSError, ssl.SSLError, TimeoutError) as exc:
                    reason = connect_reason(exc)
                    self.proxy.health.record(False, reason)
                    log.warning("upstream unreachable reason=%s", reason)
                    ex = self._exchange(ev, decision.principal)
                    self._refuse(502, f"kube-aad-proxy cannot reach the API server: {reason}", ex)
                    return
        except asyncio.CancelledError:
            return
        finally:
            self._task = None
        if self._closing:
            return
        self._backlog.popleft()
        self._forward(ev, decision)
        self._drain()

    def _forward(self, ev: HeadReceived, decision: Forward | Refuse) -> None:
        ex = self._exchange(ev, decision.principal)
        if isinstance(decision, Refuse):
            self._refuse(decision.status, decision.message, ex)
            return
        if decision.warning_on_403 is not None:
            ex.warning_on_403 = decision.warning_on_403.encode("ascii", "replace")
        self._pending.append(ex)
        self._send_up(decision.head)

    def _exchange(self, ev: HeadReceived, principal: str) -> Exchange:
        h = ev.head
        return Exchange(h.method, h.path, principal, time.perf_counter(), h.upgrade, h.keep_alive)

    def _send_up(self, data: bytes) -> None:
        if self._up is not None and self._up.transport is not None:
            self._up.transport.write(data)

    def _refuse(self, status: int, message: str, ex: Exchange) -> None:
        """Answer ``status`` after every earlier response, then close; read nothing more."""
        self._backlog.clear()
        self._pause("refused")
        ex.status = status
        self._refusal = (status_response(status, message), ex)
        if not self._pending:
            self._send_refusal()

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        body, ex = self._refusal
        self._audit(ex, ex.status)
        self._close_with(body)

    # -- upstream side (UpstreamOwner) ---------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self._closing:
            return
        if self._spliced:
            self._send_down(data)
            return
        out: list[bytes] = []  # coalesced: one TLS record and one send per read, not per piece
        for ev in self._responses.feed(data):
            if isinstance(ev, bytes):
                out.append(ev)
                continue
            if out:
                self._send_down(out[0] if len(out) == 1 else b"".join(out))
                out = []
            if isinstance(ev, ResponseDone):
                self._audit(ev.exchange, ev.exchange.status)
                if ev.close:
                    self._close_with(b"")
                    return
                if self._refusal is not None and not self._pending:
                    self._send_refusal()
                    return
            elif isinstance(ev, Upgraded):
                self._upgraded(ev)
            else:
                log.warning("upstream protocol error reason=%s", ev)
                self._fail_upstream(str(ev))
                return
        if out:
            self._send_down(out[0] if len(out) == 1 else b"".join(out))

    def _upgraded(self, ev: Upgraded) -> None:
        self._audit(ev.exchange, 101)
        self._spliced = True
        if ev.rest:
            self._send_down(ev.rest)
        held = bytes(self._reader.held)
        self._reader.held.clear()
        if held:
            self._send_up(held)
        self._paused.discard("upgrade")
        self._resume("wait")

    def upstream_lost(self, exc: Exception | None) -> None:
        up, self._up = self._up, None
        if self._closing or up is None:
            return
        if self._spliced:
            self._close_with(b"")
            return
        done = self._responses.finish_until_close()
        if done is not None:
            self._audit(done.exchange, done.exchange.status)
            self._close_with(b"")
            return
        if self._pending or self._responses.mid_response:
            self._fail_upstream("the API server closed the connection")
            return
        if self._refusal is not None:
            self._send_refusal()
        # Idle keep-alive connection closed by the API server: the next request reopens it.
        self._responses = ResponseReader(self._pending, self.config.max_head_bytes)

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self._resume("upstream-full")
        else:
            self._pause("upstream-full")

    def _fail_upstream(self, reason: str) -> None:
        """The upstream broke: a 502 if the client has no bytes of its answer yet, else just close."""
        if self._up is not None and self._up.transport is not None:
            self._up.transport.abort()
        if self._pending and not self._pending[0].answered:
            ex = self._pending.popleft()
            self._pending.clear()
            self._refusal = None
            self._refuse(502, f"kube-aad-proxy lost the API server: {reason}", ex)
            return
        for ex in self._pending:
            self._audit(ex, ex.status)
        self._pending.clear()
        self._close_with(b"")

    # -- helpers -------------------------------------------------------------------

    def _send_down(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close_with(self, data: bytes) -> None:
        """Write ``data`` (if any), close kubectl's side after it flushes, and the upstream."""
        if self._closing:
            return
        self._closing = True
        self._backlog.clear()
        if self.transport is not None:
            if data:
                self.transport.write(data)
            self.transport.close()
        if self._up is not None and self._up.transport is not None:
            self._up.transport.close()

    def _pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def _audit(self, ex: Exchange, status: int) -> None:
        self.proxy.health.request_done(status)
        audit(self.config.cluster_name, ex.principal, ex.method, ex.path, status, time.perf_counter() - ex.started)

    def check_timeouts(self, now: float) -> None:
        """Close a connection stuck in a partial head or idle too long (called by a sweep)."""
        if self._spliced or self._pending or self._task is not None or self._closing or self._backlog:
            return
        quiet = now - self.last_activity
        if self._head_started is not None:
            if now - self._head_started > self.config.head_timeout:
                log.info("closing: request head incomplete after %.1fs", now - self._head_started)
                ex = Exchange("-", "-", "-", time.perf_counter(), False, False)
                self._refuse(408, "request head not completed in time", ex)
        elif quiet > self.config.idle_timeout:
            self._close_with(b"")

    def abort(self) -> None:
        """Drop both sides now, unflushed data included (proxy shutdown)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()
        if self._up is not None and self._up.transport is not None:
            self._up.transport.abort()


def connect_reason(exc: BaseException) -> str:
    """One line, no secrets: why the API server could not be reached."""
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})"
    return exc.strerror or exc.__class__.__name__ if isinstance(exc, OSError) else exc.__class__.__name__
