"""Synchronous dispatch of binary websocket messages (the receive fast path).

Why: with the plain loop, each tunnel frame goes aiohttp parser -> aiohttp's
message queue -> wakes the session's reader task (one event-loop pass) ->
dispatch -> wakes the application's task (a second pass). Raw asyncio TCP
needs one pass. On a 64-byte round trip that extra pass per side was most of
the gap to raw TCP (1.9x), and in bulk it costs a task switch per frame.

How: after the handshake, the protocol's payload parser (aiohttp's
``WebSocketReader``, kept with its partial-frame state, so no byte is lost) is
wrapped. After every ``feed_data`` the wrapper drains the parser's queue on
the spot: each BINARY message goes straight to the session's ``on_binary``
(core.receive + dispatch), anything else (CLOSE, PING, PONG, TEXT, errors,
EOF) is moved, in order, to a fresh queue that the websocket's ``receive()``
now reads, so aiohttp's own close handshake and autoping stay untouched. Once
something waits in that queue, binary messages queue behind it too, so the
order of messages is never changed. Everything runs on the loop thread inside
``data_received``; what the dispatch queues for sending (on this session or,
through the relay's bridge, on another) is sent once per socket read
(``aio_io.WriteBatch``), not once per frame.

It relies on aiohttp internals (``ws._reader``, ``ws._parser``, the
protocol's ``_payload_parser``, the queue's ``_buffer``). ``install`` checks
each of them and the aiohttp version and returns False when anything
differs; the session then uses the plain ``receive()`` loop, which is always
correct. Tested with aiohttp 3.14. ``ARC_TUNNEL_FASTPATH=0`` (or
``TunnelConfig(fast_dispatch=False)``) turns it off, e.g. to compare.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from tunnel.aio_io import WriteBatch

__all__ = ["MIN_AIOHTTP", "FastPath", "install_fast_path"]

log = logging.getLogger("tunnel")

# Oldest aiohttp whose internals this module was checked against (the queue's
# _buffer and read(), ws._parser owning the WebSocketReader): older releases
# use the plain receive() loop.
MIN_AIOHTTP = (3, 14)
_BINARY = WSMsgType.BINARY
_BATCH = WriteBatch()


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _read_now(queue: Any) -> Any:
    """``await queue.read()`` without awaiting: only called when the queue
    has a message or has ended, in which case ``read`` never suspends. Going
    through ``read`` keeps aiohttp's size accounting and flow control
    (pause/resume of the transport, stalled parser) exactly as designed."""
    coro = queue.read()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    # Unreachable while the precondition holds; never leave a coroutine behind.
    coro.close()
    raise RuntimeError("websocket queue would block")


class FastPath:
    """Stands in for the protocol's payload parser (see the module docstring).

    Args:
        parser: aiohttp's ``WebSocketReader`` (keeps its partial-frame state).
        old_queue: The queue that parser feeds; drained here, read by nobody else.
        new_queue: The queue ``ws.receive()`` reads from now on.
        on_binary: Called with each binary payload, on the loop thread; returns
            False once the session no longer takes messages this way (closed),
            after which binary messages are queued for ``receive()`` as well.
    """

    def __init__(
        self, parser: Any, old_queue: Any, new_queue: Any, on_binary: Callable[[bytes], bool]
    ) -> None:
        self._parser = parser
        self._old = old_queue
        self._old_buffer = old_queue._buffer
        self._new = new_queue
        self._new_buffer = new_queue._buffer
        self._on_binary = on_binary
        self._active = True
        self._ended = False

    def feed_data(self, data: Any) -> Any:
        """The protocol's ``data_received`` calls this with socket bytes."""
        with _BATCH:
            result = self._parser.feed_data(data)
            self.drain()
        return result

    def feed_eof(self) -> None:
        """The protocol calls this when the connection is lost."""
        with contextlib.suppress(Exception):
            self._parser.feed_eof()
        self.drain()
        if not self._ended:
            self._ended = True
            self._new.feed_eof()

    def stop(self) -> None:
        """Queue every later binary message for ``receive()`` (session closing)."""
        self._active = False

    def drain(self) -> None:
        """Move everything the parser produced on: binary to ``on_binary``,
        the rest (and whatever follows it) to the new queue."""
        old = self._old
        buf = self._old_buffer
        new = self._new
        while buf:
            msg = _read_now(old)
            if msg.type is _BINARY and self._active and not self._new_buffer:
                if not self._on_binary(msg.data):
                    self._active = False
                continue
            data = msg.data
            new.feed_data(msg, len(data) if isinstance(data, (bytes, str)) else 0)
        if not self._ended and old.is_eof():
            self._ended = True
            exc = old.exception()
            if exc is not None:
                new.set_exception(exc)
            else:
                new.feed_eof()


def install_fast_path(ws: Any, on_binary: Callable[[bytes], bool]) -> FastPath | None:
    """Switch ``ws`` to synchronous dispatch of binary messages.

    Call it on the loop thread, before anything awaits ``ws.receive()``.

    Args:
        ws: A prepared ``web.WebSocketResponse`` or a ``ClientWebSocketResponse``.
        on_binary: See ``FastPath``.

    Returns:
        The installed ``FastPath`` (already drained of what was buffered), or
        None when aiohttp differs from what this module knows; then keep
        using ``ws.receive()`` for every message.
    """
    if _version(aiohttp.__version__) < MIN_AIOHTTP:
        return None
    try:
        from aiohttp._websocket.reader import WebSocketDataQueue
        from aiohttp.helpers import DEFAULT_CHUNK_SIZE

        parser = ws._parser
        old_queue = ws._reader
        protocol = ws._writer.protocol
        if (
            parser is None
            or not isinstance(old_queue, WebSocketDataQueue)
            or getattr(protocol, "_payload_parser", None) is not parser
            or not hasattr(old_queue, "_buffer")
            or ws.closed
        ):
            return None
        new_queue = WebSocketDataQueue(protocol, DEFAULT_CHUNK_SIZE, loop=ws._loop)
    except (AttributeError, ImportError, TypeError):
        return None
    fast = FastPath(parser, old_queue, new_queue, on_binary)
    protocol._payload_parser = fast
    ws._reader = new_queue
    if getattr(protocol, "_payload", None) is old_queue:
        # Client side: read timeouts and connection loss are reported there.
        protocol._payload = new_queue
    fast.drain()
    log.debug("websocket fast path installed")
    return fast
