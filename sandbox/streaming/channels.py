"""exec/attach over the websocket channel protocols (``v5.channel.k8s.io``,
``v4.channel.k8s.io``, ``channel.k8s.io`` and the base64 variants).

Binary messages carry ``[channel, payload...]``; base64 variants use text
messages ``'0'+channel`` followed by standard base64. Channels: 0 stdin,
1 stdout, 2 stderr, 3 error (Status JSON from v4), 4 resize (JSON), and in v5
255 = CLOSE ``[255, ch]`` (stdin EOF for ch 0).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging

from sandbox.runtime import PodRuntime, ProcessIO
from sandbox.streaming.bytequeue import ByteQueue
from sandbox.streaming.options import (
    StreamOptions,
    exit_status_json,
    exit_status_text,
    internal_error_json,
    protocol_version,
)
from sandbox.streaming.session import run_process, wait_first
from sandbox.streaming.websocket import WsConnection

log = logging.getLogger("sandbox.streaming")

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
# Stop reading the websocket while this much stdin waits for the process.
STDIN_HIGH_WATER = 4 * 1024 * 1024


class ChannelWriter:
    """Sends on one channel in the negotiated encoding."""

    def __init__(self, ws: WsConnection, protocol: str) -> None:
        self._ws = ws
        self._base64 = "base64" in protocol

    async def send(self, channel: int, data: bytes) -> None:
        if self._base64:
            text = chr(ord("0") + channel).encode() + base64.b64encode(data)
            await self._ws.send(text, text=True)
        else:
            await self._ws.send(bytes([channel]) + data)


def _decode(msg: tuple[bool, bytes], protocol: str) -> tuple[int, bytes] | None:
    is_text, payload = msg
    if not payload:
        return None
    if "base64" in protocol:
        if not is_text:
            return None
        with contextlib.suppress(binascii.Error, ValueError):
            return payload[0] - ord("0"), base64.b64decode(payload[1:])
        return None
    return payload[0], payload[1:]


def apply_resize(io: ProcessIO, data: bytes) -> None:
    """Resize events: one JSON object per event, ``{"Width":W,"Height":H}``."""
    for line in data.splitlines() or [data]:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            size = json.loads(line)
            width = size.get("Width", size.get("width"))
            height = size.get("Height", size.get("height"))
            if isinstance(width, int) and isinstance(height, int):
                io.resize(width, height)


async def serve_ws_exec(kind: str, ws: WsConnection, protocol: str, runtime: PodRuntime,
                        opts: StreamOptions) -> None:
    """Run one exec/attach session on an open websocket, then close it."""
    out = ChannelWriter(ws, protocol)
    version = protocol_version(protocol)
    stdin = ByteQueue() if opts.stdin else None

    async def send_out(data: bytes) -> None:
        await out.send(STDOUT, data)

    async def send_err(data: bytes) -> None:
        await out.send(STDERR, data)

    io = ProcessIO(stdin=stdin, stdout=send_out if opts.stdout else None,
                   stderr=send_err if opts.stderr else None, tty=opts.tty)

    async def pump_in() -> None:
        while (msg := await ws.recv()) is not None:
            decoded = _decode(msg, protocol)
            if decoded is None:
                continue
            channel, data = decoded
            if channel == STDIN and stdin is not None:
                stdin.feed(data)
                if stdin.size > STDIN_HIGH_WATER:
                    await stdin.wait_drained()  # TCP backpressure on the client
            elif channel == RESIZE:
                apply_resize(io, data)
            elif channel == CLOSE and version >= 5 and data[:1] == bytes([STDIN]):
                if stdin is not None:
                    stdin.feed_eof()
        if stdin is not None:
            stdin.feed_eof()

    # The apiserver's websocket translator writes an empty message first
    # (stdout, else stderr, else error) so the client knows the stream is live.
    first = STDOUT if opts.stdout else STDERR if opts.stderr else ERROR
    await out.send(first, b"")
    reader = asyncio.create_task(pump_in())
    proc = asyncio.create_task(run_process(kind, runtime, opts, io))
    try:
        await wait_first(proc, reader)
        if proc.cancelled():
            return
        code, error = proc.result()
        if version >= 4:
            status = exit_status_json(code, opts.command) if code is not None else (
                internal_error_json(error or "error"))
        else:
            status = exit_status_text(code) if code is not None else (error or "").encode()
        if status:
            await out.send(ERROR, status)
        await ws.close()
    except asyncio.CancelledError:
        await ws.close(1001, "pod stopped")  # the pod went away mid-session
        raise
    finally:
        reader.cancel()
        proc.cancel()
        await asyncio.gather(reader, proc, return_exceptions=True)
