"""The I/O half of a tunnel session: writer, keepalive and shutdown.

Theory of operation. ``SessionIO`` owns what touches the websocket on the way
out and the session's lifetime; ``TunnelSession`` (aio_session.py) adds the
reader, the dispatch of core events to streams, and the public stream API.

* Writing: every call that queues frames to the core then calls ``_kick``.
  When the writer task is idle (nothing in flight) and the transport is not
  paused, ``_kick`` frames the batch right there (``transport.send_now``):
  no task hop, which is what keeps small round trips close to raw TCP. Else
  it wakes the writer task, which sends with ``transport.send_many``
  (awaiting the transport's drain when paused); kicks coalesce while it runs.
* Keepalive (aio_keepalive.py): PING every ``ping_interval`` (the accepting
  side: only after silence from the peer); a PING unanswered within
  ``ping_timeout`` means the peer is dead: GOAWAY(PING_TIMEOUT) and close.
  Streams silent for ``idle_timeout`` are reset (IDLE_TIMEOUT). Neither runs
  a task: each is a ``Timer`` of the loop's one ``TimerWheel``
  (aio_timers.py), and the idle sweep is armed only while the session has
  streams, so an idle session costs one wheel entry per interval.
* Shutdown happens once, in its own task (``_begin_shutdown``): mark closed
  and wake every waiter with ``TunnelClosed``, let the writer flush what the
  core queued (GOAWAY included), close the websocket with a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import threading
from typing import TYPE_CHECKING, Protocol

from tunnel.aio_config import TunnelConfig
from tunnel.aio_errors import TunnelClosed
from tunnel.aio_keepalive import Keepalive
from tunnel.aio_timers import timer_wheel
from tunnel.connection import Connection
from tunnel.errors import ErrorCode, LocalProtocolError
from tunnel.message_transport import CLOSE_GOING_AWAY, CLOSE_OK, MessageTransport

if TYPE_CHECKING:
    from tunnel.aio_stream import TunnelStream

__all__ = ["SessionIO", "WriteBatch"]

log = logging.getLogger("tunnel")

_PING = struct.Struct("!Q")
# Bound on how long shutdown waits for the writer to flush and for tasks to
# finish after being cancelled: a stuck peer must not stall our exit.
FLUSH_TIMEOUT = 5.0
# The same bound once the peer is known dead (no PONG).
DEAD_PEER_FLUSH_TIMEOUT = 0.5


class _Deferred(Protocol):
    """What a WriteBatch defers: a session, or a socket splice (aio_socket.py)."""

    _batched: bool

    def _kick(self) -> None: ...


class _BatchState(threading.local):
    """Kicks deferred while the fast path dispatches one socket read.

    One read of a busy websocket holds several frames; the DATA among them
    may go on to other sessions (the relay's bridge) or queue WINDOW frames.
    Sending after each frame would cost one TLS write and one send() system
    call per frame per session; deferring the kicks to the end of the read
    sends each session's frames as one batch. Nothing waits longer: the
    batch ends before the loop runs anything else. Per thread, since each
    event loop (one per thread) batches its own sessions.
    """

    depth = 0

    def __init__(self) -> None:
        self.pending: list[_Deferred] = []


BATCH = _BatchState()


class WriteBatch:
    """Context manager (reusable): defer every session's ``_kick`` until the
    outermost block ends, then kick each session once (see ``_BatchState``)."""

    __slots__ = ()

    def __enter__(self) -> None:
        BATCH.depth += 1

    def __exit__(self, *exc: object) -> None:
        state = BATCH
        state.depth -= 1
        if state.depth == 0 and state.pending:
            pending = state.pending
            state.pending = []
            for deferred in pending:
                deferred._batched = False
                deferred._kick()


class SessionIO:
    """Writer, pings and lifetime of one session; subclassed by TunnelSession.

    Args:
        transport: The websocket (message_transport.py).
        core: The sans-I/O connection it drives.
        config: Limits and timeouts.
        name: Shown in every log record.
    """

    def __init__(
        self, transport: MessageTransport, core: Connection, config: TunnelConfig, name: str
    ) -> None:
        self._transport = transport
        self._core = core
        self.config = config
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._writer_task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._kicked = False
        self._batched = False  # in BATCH.pending
        self._pending: list[bytes] = []
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._ping_ids = itertools.count(1)
        self._closed = False
        self.close_reason = ""
        self._close_cause: BaseException | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._closed_event = asyncio.Event()
        self.rtt: float | None = None
        self.their_pings = 0  # PINGs received (the accepting side's keepalive skips a ping after one)
        self.is_client = False  # the side that dialled (TunnelSession sets it)
        self.debug = log.isEnabledFor(logging.DEBUG)
        self._streams: dict[int, TunnelStream] = {}  # the session's live streams
        self._keepalive: Keepalive | None = None  # made by _start_timers (is_client known then)
        self._idle_sweep = timer_wheel().timer(self._on_idle_sweep_due)

    def _start_timers(self) -> None:
        """Start the keepalive (the idle sweep arms itself with the first stream)."""
        if self._closed:
            return  # closed before it ran: nothing to keep alive
        self._keepalive = Keepalive(
            self.config.ping_interval, self.config.ping_timeout, is_client=self.is_client,
            send_ping=self._send_keepalive_ping, on_dead=self._on_ping_timeout,
        )
        self._keepalive.start()

    def _send_keepalive_ping(self) -> bytes:
        payload = _PING.pack(next(self._ping_ids))
        with contextlib.suppress(LocalProtocolError):  # the core failed: the session is closing
            self._core.ping(payload)
            self._kick()
        return payload

    def _on_ping_timeout(self) -> None:
        log.warning("%s ! no PONG within %g s: peer is dead", self.name, self.config.ping_timeout)
        if not self._closed:
            with contextlib.suppress(LocalProtocolError):
                self._core.goaway(ErrorCode.PING_TIMEOUT, "ping timeout")
        # The peer is not reading: waiting long to flush or for its close
        # frame would only delay the reconnect.
        self._begin_shutdown(
            "ping timeout", ws_code=CLOSE_GOING_AWAY, flush_timeout=DEAD_PEER_FLUSH_TIMEOUT
        )

    def _on_their_ping(self) -> None:
        """The peer pinged us (the core answers it): it is alive."""
        self.their_pings += 1
        if self._keepalive is not None:
            self._keepalive.their_ping()

    def _add_stream(self, stream: TunnelStream) -> None:
        """Track a new stream; the first one arms the idle sweep."""
        self._streams[stream.id] = stream
        if not self._idle_sweep.armed and self.config.idle_timeout > 0 and not self._closed:
            self._idle_sweep.schedule(self._idle_period())

    def _idle_period(self) -> float:
        # Resets land within idle_timeout + 2 periods of a stream's last byte.
        # Capped at 60 s: with the default hour that is 3.3 % late, and a
        # relay with 5,000 agent sessions holding streams looks at each of
        # them once a minute, not 12 times (5 s cap).
        return min(self.config.idle_timeout / 4, 60.0)

    def _on_idle_sweep_due(self) -> None:
        # Per stream (in its _idle_moved / _idle_since slots, not in a dict
        # of tuples: no memory per idle stream beyond the stream itself):
        # bytes moved either way at the last look, and since when that count
        # has not changed. Comparing counters keeps the clock off the DATA path.
        if self._closed:
            return
        idle = self.config.idle_timeout
        now = self._loop.time()
        for stream in list(self._streams.values()):
            if not stream._accepted:
                continue
            moved = stream.bytes_received + stream.bytes_sent
            if moved != stream._idle_moved:
                stream._idle_moved = moved
                stream._idle_since = now
            elif now - stream._idle_since >= idle:
                log.info("%s x stream %d idle for %g s: reset", self.name, stream.id, idle)
                stream.reset(ErrorCode.IDLE_TIMEOUT, "idle timeout")
        if self._streams and not self._closed:
            self._idle_sweep.schedule(self._idle_period())

    def _session_closed(self, exc: TunnelClosed) -> None:
        """Hook: wake every stream waiter with ``exc`` (TunnelSession)."""

    def _on_pong(self, payload: bytes) -> None:
        rtt = self._keepalive.pong(payload) if self._keepalive is not None else None
        if rtt is not None:
            self.rtt = rtt
            if self.debug:
                log.debug("%s = rtt %.3f ms", self.name, rtt * 1e3)
            return
        entry = self._pings.get(payload)
        if entry is not None and not entry[0].done():
            self.rtt = self._loop.time() - entry[1]
            entry[0].set_result(self.rtt)

    @property
    def closed(self) -> bool:
        """True once the session is closing or closed."""
        return self._closed

    async def wait_closed(self) -> None:
        """Wait until the session has fully ended (websocket closed)."""
        await self._closed_event.wait()

    async def ping(self, timeout: float | None = None) -> float:
        """Send a PING and wait for its PONG.

        Args:
            timeout: Seconds to wait (default ``config.ping_timeout``; 0 = forever).

        Returns:
            The round-trip time in seconds (also stored in ``self.rtt``).

        Raises:
            TimeoutError: No PONG in time.
            TunnelClosed: The session closed meanwhile.
        """
        if self._closed:
            raise self._closed_error()
        payload = _PING.pack(next(self._ping_ids))
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[payload] = (fut, self._loop.time())
        self._core.ping(payload)
        self._kick()
        wait = self.config.ping_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait or None):
                return await fut
        finally:
            self._pings.pop(payload, None)

    def _kick(self) -> None:
        """Something may have been queued to the core: send it now if the
        writer is idle and the transport accepts it, else wake the writer."""
        if self._kicked:
            return  # the writer task is already due to run
        batch = BATCH
        if batch.depth:
            if not self._batched:
                self._batched = True
                batch.pending.append(self)
            return
        fut = self._wakeup
        if fut is not None and not fut.done():
            # Writer idle: nothing in flight, so writing here keeps the order.
            messages = self._core.data_to_send()
            if not messages:
                return
            try:
                if self._transport.send_now(messages):
                    return
            except (ConnectionError, RuntimeError, OSError) as exc:
                self._lost(exc)
                return
            self._pending = messages
            self._kicked = True
            fut.set_result(None)
        else:
            self._kicked = True

    def _closed_error(self) -> TunnelClosed:
        exc = TunnelClosed(self.close_reason or "tunnel closed")
        if self._close_cause is not None:
            exc.__cause__ = self._close_cause
            exc.__suppress_context__ = True
        return exc

    async def _write_loop(self) -> None:
        core = self._core
        send = self._transport.send_many
        debug = self.debug
        try:
            while True:
                if not self._kicked:
                    if self._closed:
                        return
                    self._wakeup = self._loop.create_future()
                    try:
                        await self._wakeup
                    finally:
                        self._wakeup = None
                self._kicked = False
                messages = self._pending + core.data_to_send()
                self._pending = []
                if debug and messages:
                    log.debug(
                        "%s > %d messages, %d bytes",
                        self.name,
                        len(messages),
                        sum(map(len, messages)),
                    )
                if messages:
                    await send(messages)
        except (ConnectionError, RuntimeError, OSError) as exc:
            # A closing transport raises these (aiohttp: ClientConnectionResetError,
            # a ConnectionError, or RuntimeError).
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        if not self._closed:
            log.info("%s x connection lost while sending: %s", self.name, type(exc).__name__)
            self._close_cause = exc
            self._begin_shutdown("connection lost")

    def _begin_shutdown(
        self, reason: str, *, ws_code: int = CLOSE_OK, flush_timeout: float = FLUSH_TIMEOUT
    ) -> None:
        """Mark the session closed (once) and start the shutdown task."""
        if self._shutdown_task is not None:
            return
        self._closed = True
        self.close_reason = reason
        if self._keepalive is not None:
            self._keepalive.stop()
        self._idle_sweep.cancel()
        exc = self._closed_error()
        self._session_closed(exc)
        for fut, _ in self._pings.values():
            if not fut.done():
                fut.set_exception(self._closed_error())
        self._kick()
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)  # let the writer see _closed and return
        self._shutdown_task = self._loop.create_task(self._shutdown(reason, ws_code, flush_timeout))

    async def _shutdown(self, reason: str, ws_code: int, flush_timeout: float) -> None:
        try:
            if self._writer_task is not None:
                with contextlib.suppress(TimeoutError, Exception):
                    async with asyncio.timeout(flush_timeout):
                        await asyncio.shield(self._writer_task)
            message = reason.encode()[:120]  # a close reason must fit one control frame
            with contextlib.suppress(TimeoutError, Exception):
                async with asyncio.timeout(max(flush_timeout, 0.1)):
                    await self._transport.close(ws_code, message)
            log.info("%s x session closed: %s", self.name, reason)
        finally:
            self._closed_event.set()
