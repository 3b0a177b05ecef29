"""exec/attach over SPDY/3.1 (kubectl <= 1.29, and newer ones on fallback).

The client opens one stream per channel, each with a ``streamType`` header:
``error``, ``stdin``, ``stdout``, ``stderr`` (not with a tty), ``resize``
(tty, v3+). Like kubelet we wait until the expected set has arrived, then run
the process; stdin EOF is the stdin stream's FIN; at the end stdout/stderr get
FIN and the exit status goes on the error stream (Status JSON from v4, text
before).
"""

from __future__ import annotations

import asyncio
import logging

from sandbox.runtime import PodRuntime, ProcessIO
from sandbox.streaming.channels import apply_resize
from sandbox.streaming.options import (
    StreamOptions,
    exit_status_json,
    exit_status_text,
    internal_error_json,
    protocol_version,
)
from sandbox.streaming.session import run_process, wait_first
from sandbox.streaming.spdy.session import SpdySession, SpdyStream
from sandbox.streaming.transport import ByteTransport

log = logging.getLogger("sandbox.streaming")

# kubelet's DefaultStreamCreationTimeout.
STREAM_CREATION_TIMEOUT = 30.0


async def serve_spdy_exec(kind: str, transport: ByteTransport, protocol: str,
                          runtime: PodRuntime, opts: StreamOptions) -> None:
    """Run one exec/attach session over an upgraded SPDY connection."""
    version = protocol_version(protocol)
    expected = {"error"}
    if opts.stdin:
        expected.add("stdin")
    if opts.stdout:
        expected.add("stdout")
    if opts.stderr and not opts.tty:
        expected.add("stderr")
    if opts.tty and version >= 3:
        expected.add("resize")
    streams: dict[str, SpdyStream] = {}
    ready = asyncio.Event()

    def on_stream(stream: SpdyStream) -> None:
        streams[stream.header("streamType")] = stream
        if expected <= streams.keys():
            ready.set()

    session = SpdySession(transport, on_stream)
    reader = asyncio.create_task(session.run())
    try:
        try:
            await asyncio.wait_for(_ready_or_closed(ready, session), STREAM_CREATION_TIMEOUT)
        except TimeoutError:
            log.info("%s timed out waiting for streams %s", kind, sorted(expected))
            return
        if not ready.is_set():
            return
        await _run(kind, session, streams, runtime, opts, version, reader)
    finally:
        await session.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _ready_or_closed(ready: asyncio.Event, session: SpdySession) -> None:
    waiters = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(session.closed.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _run(kind: str, session: SpdySession, streams: dict[str, SpdyStream],
               runtime: PodRuntime, opts: StreamOptions, version: int,
               reader: asyncio.Task[None]) -> None:
    stdout, stderr, error = streams.get("stdout"), streams.get("stderr"), streams["error"]
    stdin = streams.get("stdin")
    io = ProcessIO(stdin=stdin.queue if stdin else None,
                   stdout=stdout.write if stdout else None,
                   stderr=stderr.write if stderr else None, tty=opts.tty)
    resize_task = None
    if "resize" in streams:
        resize_stream = streams["resize"]

        async def pump_resize() -> None:
            while line := await resize_stream.queue.readline():
                apply_resize(io, line)

        resize_task = asyncio.create_task(pump_resize())
    proc = asyncio.create_task(run_process(kind, runtime, opts, io))
    try:
        await wait_first(proc, reader)
        if proc.cancelled():
            return
        code, message = proc.result()
        for s in (stdout, stderr):
            if s is not None:
                await s.write_eof()
        if version >= 4:
            status = exit_status_json(code, opts.command) if code is not None else (
                internal_error_json(message or "error"))
        else:
            status = exit_status_text(code) if code is not None else (message or "").encode()
        if status:
            await error.write(status)
        await error.write_eof()
    finally:
        if resize_task is not None:
            resize_task.cancel()
        proc.cancel()
