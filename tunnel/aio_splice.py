"""Bidirectional copies: stream <-> socket (``splice``) and stream <-> stream
(``splice_streams``, the relay's router).

Both directions run as two tasks owned by the call; the call returns only when
both ended, whatever happened, so no task outlives it. Half closes travel
(EOF -> FIN, FIN -> ``write_eof`` or close); an error on one side aborts both:
a socket error resets the stream, a RESET (or a dead session) aborts the
socket, a RESET on one stream resets the other with the same code.
"""

from __future__ import annotations

import asyncio
import contextlib

from tunnel.aio_errors import StreamError, StreamReset, TunnelClosed
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


async def splice_streams(a: TunnelStream, b: TunnelStream) -> None:
    """Copy between two streams (possibly on two sessions) until both finish.

    FIN is forwarded as FIN; a RESET on one side resets the other with the
    same code and reason; a dead session resets the other side with CANCEL.

    Args:
        a: One stream.
        b: The other stream.
    """

    def abort(exc: BaseException) -> None:
        code: ErrorCode | int = ErrorCode.CANCEL
        reason = "other side closed"
        if isinstance(exc, StreamReset):
            code, reason = exc.code, exc.reason
        for stream in (a, b):
            stream.reset(code, reason)  # type: ignore[arg-type]

    async def pump(src: TunnelStream, dst: TunnelStream) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    await dst.write_eof()
                    return
                await dst.write(data)
        except (StreamError, TunnelClosed) as exc:
            abort(exc)

    tasks = [asyncio.ensure_future(pump(a, b)), asyncio.ensure_future(pump(b, a))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        a.reset(ErrorCode.CANCEL, "cancelled")
        b.reset(ErrorCode.CANCEL, "cancelled")
        raise
    finally:
        for stream in (a, b):
            with contextlib.suppress(StreamError, TunnelClosed):
                await stream.aclose()
