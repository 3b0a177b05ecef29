"""``TunnelSession``: drives the sans-I/O core over one websocket (a ``MessageTransport``).

Theory of operation. The session's own task (``run``) is the reader:
``transport.receive()`` (or, pushed, ``_on_binary``) -> ``core.receive()`` -> dispatch the events to
``TunnelStream`` objects, waking their futures; nothing here parses frames.
DATA and WINDOW, nearly all the traffic, are dispatched first. The writer,
the keepalive and the shutdown sequence live in ``SessionIO`` (aio_io.py);
a sweep on the loop's timer wheel resets streams silent for ``idle_timeout``.

Each OPEN from the peer runs ``on_stream`` in its own task; the session keeps
every task it starts and cancels and awaits them before ``run`` returns. When
the handler returns the stream is closed, unless it was handed to
``join_streams`` (the relay's router), which then owns it.
GOAWAY either way drains: no new streams, and once the last stream is done
the session closes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from tunnel import SUBPROTOCOL
from tunnel import events as ev
from tunnel.aio_config import TunnelConfig
from tunnel.aio_errors import StreamError, StreamRefused, TunnelClosed
from tunnel.aio_forward import StreamBridge
from tunnel.aio_io import DEAD_PEER_FLUSH_TIMEOUT, FLUSH_TIMEOUT, SessionIO
from tunnel.aio_stream import TunnelStream
from tunnel.aio_ws_aiohttp import AiohttpTransport
from tunnel.connection import Connection
from tunnel.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel.message_transport import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    MessageTransport,
    TransportClosed,
)

__all__ = ["StreamHandler", "TunnelSession"]

log = logging.getLogger("tunnel")

StreamHandler = Callable[[TunnelStream], Awaitable[None]]

# Payload bytes appear in debug logs only when this is set: they may be secrets.
_DEBUG_PAYLOAD = os.environ.get("ARC_TUNNEL_DEBUG_PAYLOAD") == "1"
_DATA = ev.DataReceived
_WINDOW = ev.WindowUpdated


class TunnelSession(SessionIO):
    """One tunnel over one websocket (see the module docstring).

    Args:
        ws: A ``MessageTransport`` (message_transport.py), or an aiohttp
            websocket (a prepared ``web.WebSocketResponse`` or a
            ``ClientWebSocketResponse``, made with ``server_websocket_response``
            / ``ws_connect_kwargs``), which is wrapped in ``AiohttpTransport``.
        is_client: True on the side that dialled (opens odd stream ids).
        config: Limits and timeouts.
        name: Shown in every log record, e.g. ``"agent:rg/demo"``.
        on_stream: ``async handler(stream)`` run in its own task for each
            OPEN from the peer; it must call ``stream.accept()`` or
            ``stream.reject()``. When it returns the stream is closed
            (``aclose``) unless ``join_streams`` took it; without a handler
            every OPEN is refused.

    Call ``await run()`` next (it returns when the session ends).
    """

    def __init__(
        self,
        ws: Any,
        *,
        is_client: bool,
        config: TunnelConfig | None = None,
        name: str = "tunnel",
        on_stream: StreamHandler | None = None,
    ) -> None:
        config = config or TunnelConfig()
        transport = ws if isinstance(ws, MessageTransport) else AiohttpTransport(ws)
        super().__init__(transport, Connection(is_client=is_client, limits=config.limits), config, name)
        self.is_client = is_client
        self._on_stream = on_stream
        self._blocked_writers: set[TunnelStream] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._goaway_sent = False
        self._goaway_received = False
        self._goaway_event = asyncio.Event()  # set with _goaway_received

    def __repr__(self) -> str:
        return f"<TunnelSession {self.name} streams={len(self._streams)}>"

    # ------------------------------------------------------------ public API

    @property
    def transport(self) -> MessageTransport:
        """The websocket this session runs on."""
        return self._transport

    @property
    def streams(self) -> int:
        """Number of streams still in use."""
        return len(self._streams)

    @property
    def buffered(self) -> int:
        """Bytes received on this session's streams and not yet consumed (read,
        written to a socket, or passed on by the relay's bridge)."""
        return sum(stream.buffered for stream in self._streams.values())

    @property
    def buffer_bound(self) -> int:
        """What ``buffered`` can reach right now: the receive windows granted
        to the live streams (never above ``config.limits.buffer_bound``)."""
        return self._core.buffered_bound

    @property
    def goaway_received(self) -> bool:
        """True once the peer sent GOAWAY (e.g. the relay is shutting down):
        open no new streams here; dial a new session for new work."""
        return self._goaway_received

    async def wait_goaway_received(self) -> None:
        """Return once the peer sent GOAWAY (at once if it already did).

        It does not return when the session ends without one: wait on
        ``run()`` or ``wait_closed()`` beside it.
        """
        await self._goaway_event.wait()

    @property
    def draining(self) -> bool:
        """True once a GOAWAY went either way: ``open_stream`` is refused."""
        return self._goaway_sent or self._goaway_received

    async def run(self) -> None:
        """Serve the session until it ends; ``close_reason`` then says why.

        Never raises for a peer's misbehaviour or a lost connection: streams
        and waiters see ``TunnelClosed`` instead.
        """
        try:
            if self._transport.subprotocol != SUBPROTOCOL:
                log.warning("%s ! websocket subprotocol is not %s: refused", self.name, SUBPROTOCOL)
                self._begin_shutdown(
                    f"websocket subprotocol {SUBPROTOCOL} not negotiated",
                    ws_code=CLOSE_PROTOCOL_ERROR,
                )
            else:
                # DEBUG: the relay and the agent each log their own "connected"
                # line; a second one per session is measurable in a reconnect storm.
                log.debug("%s = session open", self.name)
                self._writer_task = self._loop.create_task(self._write_loop())
                self._start_timers()
                if self.config.fast_dispatch:
                    self._transport.set_receiver(self._on_binary)
                await self._read_loop()
                self._begin_shutdown("websocket closed")
            assert self._shutdown_task is not None
            await asyncio.shield(self._shutdown_task)
        finally:
            if self._shutdown_task is None:  # cancelled before anything else
                self._begin_shutdown("session cancelled")
            await self._reap()

    async def open_stream(self, target: bytes, timeout: float | None = None) -> TunnelStream:
        """Open a stream to ``target`` and wait for the peer's OPEN_OK.

        Args:
            target: Opaque bytes for the peer (cluster id, host:port, ...).
            timeout: Seconds to wait for OPEN_OK (default ``config.open_timeout``;
                0 waits forever).

        Returns:
            The accepted stream: ``read``/``write`` next.

        Raises:
            StreamRefused: The peer refused (its code and reason), the open timed
                out (OPEN_TIMEOUT), or a GOAWAY forbids new streams.
            TunnelClosed: The session is closed.
        """
        if self._closed:
            raise self._closed_error()
        if self._goaway_sent or self._goaway_received:
            raise StreamRefused(ErrorCode.GOING_AWAY, "session is draining")
        try:
            sid = self._core.open_stream(target)
        except LocalProtocolError as exc:
            raise StreamRefused(exc.error_code, "cannot open stream") from exc
        stream = TunnelStream(self, sid, target, incoming=False)
        self._add_stream(stream)
        fut: asyncio.Future[None] = self._loop.create_future()
        stream._open_waiter = fut
        self._kick()
        if self.debug:
            log.debug("%s > OPEN %d %r", self.name, sid, target)
        wait = self.config.open_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait or None):
                await fut
        except TimeoutError:
            stream.reset(ErrorCode.OPEN_TIMEOUT, "open timed out")
            raise StreamRefused(ErrorCode.OPEN_TIMEOUT, f"no OPEN_OK within {wait:g} s") from None
        except asyncio.CancelledError:
            stream.reset(ErrorCode.CANCEL, "open cancelled")
            raise
        finally:
            stream._open_waiter = None
        if stream._error is not None:
            raise StreamRefused(stream._error.code, stream._error.reason)
        return stream

    async def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Drain: no new streams either way; existing ones finish, then the
        session closes by itself (``run`` returns)."""
        if self._closed or self._goaway_sent:
            return
        self._goaway_sent = True
        with contextlib.suppress(LocalProtocolError):
            self._core.goaway(code, reason)
        self._kick()
        log.info("%s > GOAWAY %s %s", self.name, code.name, reason)
        self._maybe_drained()

    async def close(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """GOAWAY, then close the websocket now; open streams see TunnelClosed."""
        if not self._closed and not self._goaway_sent:
            await self.goaway(code, reason)
        self._begin_shutdown(reason or "closed locally")
        assert self._shutdown_task is not None
        await asyncio.shield(self._shutdown_task)

    # ------------------------------------------------------------- internals

    def _forget(self, stream: TunnelStream) -> None:
        if self._streams.pop(stream.id, None) is not None:
            self._blocked_writers.discard(stream)
            self._maybe_drained()

    def _maybe_forget(self, stream: TunnelStream) -> None:
        if stream.done:
            self._forget(stream)

    def _maybe_drained(self) -> None:
        if (self._goaway_sent or self._goaway_received) and not self._streams and not self._closed:
            self._begin_shutdown("drained after GOAWAY")

    def _on_binary(self, data: bytes) -> bool:
        """One binary message pushed by the transport (``set_receiver``; over
        aiohttp, aio_fastpath.py), on the loop thread inside ``data_received``.

        Returns:
            False once the session no longer takes messages this way.
        """
        if self._closed:
            return False
        try:
            events = self._core.receive(data)
            if events:
                self._dispatch(events)
                if len(events) == 1 and type(events[0]) is _DATA:
                    return True  # see _read_loop: no output to kick
            self._kick()
        except RemoteProtocolError as exc:
            self._on_protocol_error(exc)
            return False
        except Exception:
            # A bug here must not escape into the transport's protocol callback.
            log.exception("%s ! dispatch failed", self.name)
            with contextlib.suppress(LocalProtocolError):
                self._core.goaway(ErrorCode.INTERNAL_ERROR, "internal error")
            self._begin_shutdown("internal error", ws_code=CLOSE_INTERNAL_ERROR)
            return False
        return True

    def _on_protocol_error(self, exc: RemoteProtocolError) -> None:
        log.warning("%s ! peer broke the protocol: %s (%s)", self.name, exc.error_code.name, exc)
        self._close_cause = exc
        if exc.error_code is ErrorCode.ENHANCE_YOUR_CALM:
            # The peer does not read: flushing our GOAWAY can only wait.
            self._begin_shutdown(
                "peer does not read its replies: ENHANCE_YOUR_CALM",
                ws_code=CLOSE_POLICY_VIOLATION,
                flush_timeout=DEAD_PEER_FLUSH_TIMEOUT,
            )
            return
        self._begin_shutdown(
            f"protocol error: {exc.error_code.name}", ws_code=CLOSE_PROTOCOL_ERROR
        )

    async def _read_loop(self) -> None:
        # With push delivery (set_receiver), binary messages rarely come this
        # way (only those queued behind a control message); the rest is the same.
        receive = self._transport.receive
        core = self._core
        dispatch = self._dispatch
        while True:
            try:
                msg = await receive()
            except TransportClosed as exc:
                if exc.__cause__ is not None:
                    self._close_cause = exc.__cause__
                    log.info("%s websocket error: %s", self.name, exc.reason)
                return
            try:
                if isinstance(msg, str):
                    core.receive_text()
                    return
                events = core.receive(msg)
                if events:
                    dispatch(events)
                    # A lone DATA event never queues output (credit goes
                    # back only when the app reads): skip the kick.
                    if len(events) == 1 and type(events[0]) is _DATA:
                        continue
                self._kick()
                continue
            except RemoteProtocolError as exc:
                self._on_protocol_error(exc)
            return

    def _dispatch(self, events: list[ev.Event]) -> None:
        streams = self._streams
        for event in events:
            # DATA and WINDOW first: they are nearly all the traffic.
            try:
                if isinstance(event, _DATA):
                    if self.debug:
                        self._log_data(event)
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream._on_data(event.data)
                    else:
                        self._discard(event)
                elif isinstance(event, _WINDOW):
                    if event.stream_id == 0:
                        self._on_session_credit()
                    else:
                        stream = streams.get(event.stream_id)
                        if stream is not None:
                            stream._on_credit()
                else:
                    self._dispatch_control(event)
            except Exception as exc:
                # One stream's hook failed (its socket, a bug in its handler):
                # end that stream, never the session and its other streams.
                self._stream_failed(getattr(event, "stream_id", 0), exc)

    def _on_session_credit(self) -> None:
        for stream in list(self._blocked_writers):
            try:
                stream._on_credit()
            except Exception as exc:
                self._stream_failed(stream.id, exc)

    def _stream_failed(self, stream_id: int, exc: Exception) -> None:
        """A stream's event hook raised: reset that stream, log one line."""
        stream = self._streams.get(stream_id)
        if isinstance(exc, OSError):
            # The local end of the stream went away: expected, no traceback.
            log.info(
                "%s x stream %d: local connection failed (%s errno %s): reset CANCEL",
                self.name, stream_id, type(exc).__name__, exc.errno,
            )
            code = ErrorCode.CANCEL
        else:
            log.error(
                "%s ! stream %d: event hook failed: reset INTERNAL_ERROR",
                self.name, stream_id, exc_info=exc,
            )
            code = ErrorCode.INTERNAL_ERROR
        if stream is not None:
            stream.reset(code, "local connection failed" if code is ErrorCode.CANCEL
                         else "internal error")

    def _dispatch_control(self, event: ev.Event) -> None:
        if self.debug:
            log.debug("%s < %s", self.name, event)
        if isinstance(event, ev.StreamOpened):
            self._on_open(event)
        elif isinstance(event, ev.StreamAccepted):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_accepted()
        elif isinstance(event, ev.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_fin()
                self._maybe_forget(stream)
        elif isinstance(event, ev.StreamReset):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_reset(event.error_code, event.reason)
                self._forget(stream)
        elif isinstance(event, ev.PongReceived):
            self._on_pong(event.payload)
        elif isinstance(event, ev.PingReceived):
            self._on_their_ping()
        elif isinstance(event, ev.GoAwayReceived):
            log.info("%s < GOAWAY %s %s", self.name, event.error_code.name, event.reason)
            self._goaway_received = True
            self._goaway_event.set()
            self._maybe_drained()

    def _discard(self, event: ev.DataReceived) -> None:
        # DATA for a stream we already let go of (aclose with the peer still
        # sending): acknowledge it so that its session credit comes back.
        with contextlib.suppress(LocalProtocolError):
            self._core.acknowledge_received_data(event.stream_id, len(event.data))

    def _log_data(self, event: ev.DataReceived) -> None:
        if _DEBUG_PAYLOAD:
            log.debug(
                "%s < DATA %d %d %r", self.name, event.stream_id, len(event.data), event.data[:64]
            )
        else:
            log.debug("%s < DATA %d %d", self.name, event.stream_id, len(event.data))

    def _on_open(self, event: ev.StreamOpened) -> None:
        stream = TunnelStream(self, event.stream_id, event.target, incoming=True)
        self._add_stream(stream)
        if self._on_stream is None or self._goaway_sent:
            stream.reject(ErrorCode.REFUSED_STREAM, "not accepting streams")
            return
        task = self._loop.create_task(self._run_handler(stream))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run_handler(self, stream: TunnelStream) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(stream)
        except (StreamError, TunnelClosed):
            pass  # the stream or the session already ended: nothing to add
        except asyncio.CancelledError:
            stream.reset(ErrorCode.CANCEL, "handler cancelled")
            raise
        except Exception:
            log.exception("%s ! stream handler failed on stream %d", self.name, stream.id)
            stream.reset(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            # A stream handed to join_streams (aio_forward.py) belongs to the
            # join now, which closes it when the pair ends.
            if not stream.done and not self._closed and not isinstance(stream.hook, StreamBridge):
                with contextlib.suppress(StreamError, TunnelClosed):
                    await stream.aclose()

    def _session_closed(self, exc: TunnelClosed) -> None:
        for stream in list(self._streams.values()):
            stream._on_session_closed(exc)

    async def _reap(self) -> None:
        """Cancel and await every task the session owns (nothing leaks)."""
        tasks = [
            t
            for t in (self._writer_task, *self._handlers)
            if t is not None and not t.done()
        ]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        if self._shutdown_task is not None and not self._shutdown_task.done():
            tasks.append(self._shutdown_task)
        if tasks:
            await asyncio.wait(tasks, timeout=FLUSH_TIMEOUT)
        for fut in [s._open_waiter for s in self._streams.values()]:
            if fut is not None and not fut.done():
                fut.cancel()
        self._streams.clear()
        self._blocked_writers.clear()
