"""The local listener: each accepted TCP connection becomes one tunnel stream
to the cluster, and bytes are spliced both ways untouched (kubectl's TLS ends
inside the cluster, not here)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

from client.errors import (
    AgentOffline,
    CliError,
    ClusterNotFound,
    Forbidden,
    PortInUse,
    RelayUnreachable,
)
from client.relay_client import RelaySessionKeeper
from tunnel import ErrorCode

__all__ = ["TLS_ALERT_INTERNAL_ERROR", "LocalListener", "refusal_error"]

log = logging.getLogger("client")

OPEN_TIMEOUT = 15.0
# StreamReader buffer per connection: bulk reads (port-forward, cp) move up to
# this much per read instead of asyncio's 64 KiB default, so fewer, larger DATA writes.
READ_LIMIT = 1 << 20
# Connections accepted but still waiting for their stream to open (relay
# session, OPEN -> OPEN_OK). kubectl opens a handful at once and a busy
# script a few dozen; beyond this the relay or the agent is not answering,
# and queuing more only holds sockets and tasks: excess connections are
# closed at once (the client sees the connection closed and may retry).
MAX_PENDING_OPENS = 128
# What a local connection gets when no stream can be opened for it (relay
# lost, cluster offline, refused): a plaintext TLS alert record (fatal,
# internal_error), which a TLS client may receive before any handshake. kubectl
# then fails at once with "remote error: tls: internal error"; a bare close
# reads as EOF, which client-go retries for ~30-40 s before giving up. No key
# is involved: kubectl's TLS still ends only at kube-aad-proxy.
TLS_ALERT_INTERNAL_ERROR = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50])
# The refused client's ClientHello is read (up to this much, this long) before
# the alert, so that closing with unread data does not reset the alert away.
CLIENT_HELLO_READ = 16 * 1024 + 5
CLIENT_HELLO_WAIT = 1.0


def refusal_error(code: ErrorCode | int, reason: str, cluster: str) -> CliError:
    """Turn a stream refusal at OPEN into the user's one-line error."""
    name = code.name if isinstance(code, ErrorCode) else str(code)
    if name == "TARGET_UNAVAILABLE":
        return AgentOffline(f"cluster {cluster} is offline (its agent is not connected to the relay): "
                            "check that arc-agent is running in the cluster")
    if name == "FORBIDDEN":
        return Forbidden(f"{reason or 'forbidden'}: arc-proxy needs the cluster-user role on cluster {cluster}")
    if name == "NOT_FOUND":
        return ClusterNotFound(f"cluster {cluster} is not registered at the relay: "
                               "check the name and -g, or 'arcctl list'")
    if name == "OPEN_TIMEOUT":
        return AgentOffline(f"cluster {cluster} did not answer the stream open in time: "
                            "check that its agent is running")
    if name == "CONNECT_FAILED":
        return AgentOffline(f"the agent of {cluster} could not reach its API server proxy "
                            f"({reason or 'connect failed'})")
    return CliError(f"the relay refused the stream to {cluster} ({name}: {reason or 'no reason'})")


class LocalListener:
    """Listens on ``host:port`` and pipes every connection into a stream.

    Args:
        keeper: the relay session keeper (connects lazily when down).
        target: the stream OPEN target, ``b"<rg>/<name>"``.
        host: loopback address to bind.
        port: TCP port (0 = any).
        max_pending_opens: connections that may wait for their stream to open at
            once; more are closed on accept, with one log line each.
    """

    def __init__(self, keeper: RelaySessionKeeper, target: bytes, *, host: str = "127.0.0.1",
                 port: int = 47011, max_pending_opens: int = MAX_PENDING_OPENS) -> None:
        if max_pending_opens < 1:
            raise ValueError("max_pending_opens must be >= 1")
        self.keeper = keeper
        self.target = target
        self.host = host
        self.port = port
        self.max_pending_opens = max_pending_opens
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.refused = 0  # connections closed because too many were pending
        self._pending_opens = 0

    async def bind(self) -> int:
        """Bind and listen (before anything slow, so a taken port fails fast).

        Returns:
            The bound port.

        Raises:
            PortInUse: the port is taken.
        """
        try:
            self._server = await asyncio.start_server(
                self._on_connection, self.host, self.port, reuse_address=True,
                start_serving=False, limit=READ_LIMIT)
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(f"port {self.port} on {self.host} is in use: stop what uses it "
                                "or choose another with --port") from None
            raise CliError(f"cannot listen on {self.host}:{self.port}: {err.strerror}") from None
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def serve(self) -> None:
        """Start accepting connections."""
        assert self._server is not None, "call bind() first"
        await self._server.start_serving()

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        # asyncio runs this in its own task; track it so close() can cancel it.
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)
        try:
            await self._pipe(reader, writer)
        except asyncio.CancelledError:
            # Only close() cancels these tasks. Ending normally matters:
            # asyncio's stream callback calls task.exception() on this task,
            # which for a cancelled task logs a CancelledError traceback.
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import tunnel

        self.accepted += 1
        conn_no = self.accepted
        if self._pending_opens >= self.max_pending_opens:
            self.refused += 1
            log.warning("connection %d closed: %d connections already wait for their stream "
                        "to open (is the relay or the agent answering?)", conn_no,
                        self._pending_opens)
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small requests (kubectl GETs) must not wait for Nagle. The client
            # may already have reset the connection: splice will see that.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pending_opens += 1
        try:
            session = await self.keeper.session()
            stream = await session.open_stream(self.target, timeout=OPEN_TIMEOUT)
        except tunnel.StreamRefused as err:
            log.warning("connection %d refused: %s", conn_no, refusal_error(err.code, err.reason,
                                                                self.target.decode()))
            await self._refuse(reader, writer)
            return
        except RelayUnreachable as err:
            if self.keeper.relay_lost_reason is not None:
                # The shell already has the one "lost the relay" line.
                log.debug("connection %d refused at once: the relay is lost", conn_no)
            else:
                log.warning("connection %d closed: no stream to the relay (%s)", conn_no, err)
            await self._refuse(reader, writer)
            return
        except (TimeoutError, CliError, tunnel.TunnelClosed, OSError) as err:
            log.warning("connection %d closed: no stream to the relay (%s)", conn_no,
                        str(err) if isinstance(err, CliError) else type(err).__name__)
            await self._refuse(reader, writer)
            return
        finally:
            self._pending_opens -= 1
        log.debug("connection %d joined stream %s", conn_no, getattr(stream, "id", "?"))
        try:
            await tunnel.splice(stream, reader, writer)
        except Exception as err:  # splice reports errors as resets; never crash the listener
            log.debug("connection %d splice ended: %s", conn_no, type(err).__name__)
        finally:
            if not writer.is_closing():
                writer.close()

    @staticmethod
    async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer a connection that gets no stream with a TLS alert, then close it."""
        try:
            async with asyncio.timeout(CLIENT_HELLO_WAIT):
                await reader.read(CLIENT_HELLO_READ)
                writer.write(TLS_ALERT_INTERNAL_ERROR)
                await writer.drain()
        except (TimeoutError, OSError):
            pass  # the client went away or sent nothing: closing is all that is left
        finally:
            writer.close()

    async def close(self) -> None:
        """Stop listening and abort live connections."""
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass
