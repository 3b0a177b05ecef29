"""Bidirectional copies: stream <-> socket (``splice``) and stream <-> stream
(``splice_streams``, awaited; the relay's router uses ``join_streams``, which
returns at once, see aio_forward.py).

``splice`` hands the socket to aio_socket.py (no tasks, no read buffers); only
where that cannot attach does it run both directions as two tasks owned by the
call. Either way the call returns only when both ended, whatever happened, so
nothing outlives it. Half closes travel
(EOF -> FIN, FIN -> ``write_eof`` or close); an error on one side aborts both:
a socket error resets the stream, a RESET (or a dead session) aborts the
socket, a RESET on one stream resets the other with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib

from tunnel.aio_errors import StreamError, TunnelClosed
from tunnel.aio_forward import BytesCallback, forward_streams
from tunnel.aio_socket import attach
from tunnel.aio_stream import TunnelStream
from tunnel.errors import ErrorCode

__all__ = ["splice", "splice_streams"]

# Read size for each copy step: large enough that a bulk transfer costs few
# Python-level iterations, small enough to bound per-copy memory.
_CHUNK = 256 * 1024
# How long closing the socket may take (TLS close_notify) before we give up.
_CLOSE_TIMEOUT = 5.0


async def splice(
    stream: TunnelStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy between a stream and a TCP/TLS connection until both ends finish.

    Args:
        stream: An accepted (or just opened) tunnel stream.
        reader: The socket's reader.
        writer: The socket's writer; closed when the call returns.

    Never raises for the ends' errors (they end the copy); re-raises
    cancellation after resetting the stream and aborting the socket.
    """
    transport = writer.transport
    joined = attach(stream, reader, transport)
    if joined is not None:
        # No tasks, no read buffers: see aio_socket.py.
        try:
            await asyncio.shield(joined.done)
        except BaseException:
            stream.reset(ErrorCode.CANCEL, "cancelled")
            transport.abort()
            raise
        finally:
            if not joined.failed:
                transport.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await asyncio.shield(joined.lost)
            with contextlib.suppress(StreamError, TunnelClosed):
                await stream.aclose()
        return
    await _splice_tasks(stream, reader, writer)


async def _splice_tasks(
    stream: TunnelStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``splice`` with two copy tasks: where aio_socket.attach cannot be used."""
    failed = False

    def fail() -> None:
        nonlocal failed
        failed = True
        writer.transport.abort()

    async def socket_to_stream() -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    await stream.write_eof()
                    return
                await stream.write(data)
        except (StreamError, TunnelClosed):
            fail()
        except OSError:
            stream.reset(ErrorCode.CANCEL, "connection reset")
            fail()

    async def stream_to_socket() -> None:
        try:
            while True:
                data = await stream.read(_CHUNK)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    else:
                        writer.close()
                    return
                writer.write(data)
                await writer.drain()
        except (StreamError, TunnelClosed):
            fail()
        except OSError:
            stream.reset(ErrorCode.CANCEL, "connection reset")
            fail()

    tasks = [asyncio.ensure_future(socket_to_stream()), asyncio.ensure_future(stream_to_socket())]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stream.reset(ErrorCode.CANCEL, "cancelled")
        writer.transport.abort()
        raise
    finally:
        if not failed:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await writer.wait_closed()
        with contextlib.suppress(StreamError, TunnelClosed):
            await stream.aclose()


async def splice_streams(
    a: TunnelStream,
    b: TunnelStream,
    *,
    on_a_to_b: BytesCallback | None = None,
    on_b_to_a: BytesCallback | None = None,
) -> None:
    """Join two accepted streams (possibly on two sessions) until both finish.

    Frame-level forwarding without tasks (``aio_forward.forward_streams``):
    DATA goes from one stream's session to the other's as credit allows, and
    credit is returned only for what was passed on. FIN is forwarded as FIN;
    a RESET on one side resets the other with the same code and reason; a dead
    session resets the other side with CANCEL.

    Args:
        a: One stream.
        b: The other stream.
        on_a_to_b: Called with each chunk forwarded from ``a`` to ``b`` (metrics).
        on_b_to_a: Called with each chunk forwarded from ``b`` to ``a``.
    """
    await forward_streams(a, b, on_a_to_b=on_a_to_b, on_b_to_a=on_b_to_a)
