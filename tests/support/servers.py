"""Small TCP servers on 127.0.0.1, each bound to port 0 (read the port back
with ``server_port``), a thread-per-connection server for synchronous tests,
and a port that refuses every connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

READ_SIZE = 65536


def server_port(server: asyncio.Server) -> int:
    """The port ``server`` got when it bound port 0."""
    return int(server.sockets[0].getsockname()[1])


async def start_echo_server() -> asyncio.Server:
    """A TCP server on 127.0.0.1 echoing every byte back, FIN for FIN."""
    return await start_banner_server(b"")


async def start_banner_server(banner: bytes) -> asyncio.Server:
    """A TCP server that first sends ``banner`` then echoes (tells upstreams apart)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if banner:
                writer.write(banner)
                await writer.drain()
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, never listening)
    for as long as the block runs: held by us, so nobody else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def threaded_tcp_server(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """Serve ``serve(conn)`` in a daemon thread per connection on 127.0.0.1;
    yields the port. On exit the listener stops (connections already being
    served run on)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # the listener was shut down
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        srv.close()
        acceptor.join(5)


async def start_firehose_or_echo_server(chunk: bytes = b"f" * 65536) -> asyncio.Server:
    """A TCP server on 127.0.0.1 whose first byte picks the mode: ``F``/``f``
    sends ``chunk`` forever (a stream whose reader stalls fills every window on
    its way), anything else echoes the rest."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            mode = (await reader.readexactly(1)).upper()
            if mode == b"F":
                while True:
                    writer.write(chunk)
                    await writer.drain()
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """Copy bytes both ways until each side ends (the body of a test CONNECT proxy)."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(READ_SIZE):
                w.write(data)
                await w.drain()
        with contextlib.suppress(OSError):
            w.close()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
