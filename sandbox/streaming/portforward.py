"""port-forward over SPDY (``portforward.k8s.io``), directly or tunnelled in
websocket messages (``SPDY/3.1+portforward.k8s.io``).

Per forwarded connection the client opens two streams sharing a
``requestID`` header: ``streamType=error`` then ``streamType=data``, both with
``port``. Like kubelet we pair them, dial the target (the loopback address the
pod declares for that port), copy bytes both ways, and on failure write the
reason as text on the error stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sandbox.runtime import PodRuntime, PortForwardError
from sandbox.streaming.spdy.frames import MAX_DATA_CHUNK
from sandbox.streaming.spdy.session import SpdySession, SpdyStream
from sandbox.streaming.transport import ByteTransport

log = logging.getLogger("sandbox.streaming")

# Large socket reads; the SPDY layer splits them into 32 KiB DATA frames.
COPY_CHUNK = 8 * MAX_DATA_CHUNK
DIAL_TIMEOUT = 10.0


async def serve_portforward(transport: ByteTransport, runtime: PodRuntime) -> None:
    """Serve port-forward streams until the client closes the connection."""
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def on_stream(stream: SpdyStream) -> None:
        rid = stream.header("requestID")
        kind = stream.header("streamType")
        pair = pending.setdefault(rid, {})
        pair[kind] = stream
        if "error" in pair and "data" in pair:
            del pending[rid]
            task = asyncio.create_task(_forward(runtime, pair["error"], pair["data"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    session = SpdySession(transport, on_stream)
    try:
        await session.run()
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


async def _forward(runtime: PodRuntime, error: SpdyStream, data: SpdyStream) -> None:
    port_text = data.header("port") or error.header("port")
    try:
        port = int(port_text)
        host, tport = runtime.portforward_target(port)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, tport),
                                                DIAL_TIMEOUT)
    except (ValueError, PortForwardError, OSError, TimeoutError) as exc:
        reason = str(exc) if isinstance(exc, PortForwardError) else (
            f"dial tcp4 127.0.0.1:{port_text}: connect: connection refused")
        msg = (f"error forwarding port {port_text} to pod {runtime.name}, "
               f"uid {runtime.uid}: {reason}")
        log.info("portforward pod=%s/%s port=%s failed", runtime.namespace, runtime.name,
                 port_text)
        await error.write(msg.encode())
        await error.write_eof()
        await data.write_eof()
        return
    log.info("portforward pod=%s/%s port=%s to %s:%s", runtime.namespace, runtime.name,
             port, host, tport)

    async def upstream() -> None:
        # client -> target; the client's FIN half-closes the target socket.
        while chunk := await data.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def downstream() -> None:
        # target -> client; the target's EOF becomes FIN on the data stream.
        while chunk := await reader.read(COPY_CHUNK):
            await data.write(chunk)
        await data.write_eof()

    up = asyncio.create_task(upstream())
    down = asyncio.create_task(downstream())
    try:
        # kubectl closes its local connection only once the error stream ends,
        # so finish as soon as the target side is done (as containerd does);
        # the client's FIN alone only half-closes the target.
        await down
    except (ConnectionError, OSError):
        await data.abort()
    finally:
        up.cancel()
        down.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
        await error.write_eof()
