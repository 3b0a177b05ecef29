"""The local listener: each accepted TCP connection becomes one tunnel stream
to the cluster, and bytes are spliced both ways untouched (kubectl's TLS ends
inside the cluster, not here).

Two shapes share the port, told apart by the first byte: a TLS ClientHello
(kubeconfig ``server: https://127.0.0.1:PORT``, "direct") is spliced at once;
an HTTP request (kubeconfig ``proxy-url``) must be a CONNECT, answered ``200``
before the splice, or with a status whose reason phrase says why there is no
tunnel (see connect_head.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass

from client.connect_head import (
    CONNECT_ESTABLISHED,
    REQUEST_HEAD_WAIT,
    HeadRefused,
    is_http_first_byte,
    read_connect_request,
    refusal_response,
)
from client.errors import (
    AgentOffline,
    CliError,
    ClusterNotFound,
    Forbidden,
    PortInUse,
    RelayUnreachable,
)
from client.relay_client import BACKOFF_CAP, RelaySessionKeeper, refused_by_goaway
from tunnel import ErrorCode, TunnelStream

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


@dataclass(frozen=True)
class _NoStream:
    """Why a connection gets no stream: the CONNECT answer (status, reason phrase)."""

    status: int
    phrase: str


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
        connect_authority: the ``host:port`` a CONNECT must name (the kubeconfig's
            server); None accepts any.
    """

    def __init__(self, keeper: RelaySessionKeeper, target: bytes, *, host: str = "127.0.0.1",
                 port: int = 47011, max_pending_opens: int = MAX_PENDING_OPENS,
                 connect_authority: str | None = None) -> None:
        if max_pending_opens < 1:
            raise ValueError("max_pending_opens must be >= 1")
        self.keeper = keeper
        self.target = target
        self.host = host
        self.port = port
        self.max_pending_opens = max_pending_opens
        self.connect_authority = connect_authority
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
        # The stream opens while the first bytes arrive (as soon as the
        # connection is accepted, as before the CONNECT shape existed).
        opening = asyncio.create_task(self._open(conn_no))
        # A callback, not a finally in _open: a task cancelled before its first
        # step never runs its body.
        opening.add_done_callback(self._opened)
        deadline = asyncio.get_running_loop().time() + REQUEST_HEAD_WAIT
        try:
            first = await self._first_byte(reader, deadline)
            if first and is_http_first_byte(first[0]):
                await self._serve_connect(conn_no, first, reader, writer, opening, deadline)
                return
            outcome = await opening
        except BaseException:
            await self._drop(opening)
            raise
        if isinstance(outcome, _NoStream):
            if first:
                await self._refuse(reader, writer)
            else:
                writer.close()
            return
        if not first:  # closed, or silent past the wait: nothing to carry
            outcome.reset(ErrorCode.CANCEL, "local connection sent nothing")
            writer.close()
            return
        await self._splice(conn_no, outcome, first, reader, writer)

    async def _open(self, conn_no: int) -> TunnelStream | _NoStream:
        """Open this connection's stream, or say (log, CONNECT status) why not."""
        import tunnel

        try:
            session = await self.keeper.session()
            try:
                return await session.open_stream(self.target, timeout=OPEN_TIMEOUT)
            except tunnel.StreamRefused as err:
                if not refused_by_goaway(err.code, session):
                    raise
            # The OPEN crossed the relay's GOAWAY: once more, on the next session.
            session = await self.keeper.session()
            return await session.open_stream(self.target, timeout=OPEN_TIMEOUT)
        except tunnel.StreamRefused as err:
            refusal = refusal_error(err.code, err.reason, self.target.decode())
            log.warning("connection %d refused: %s", conn_no, refusal)
            return _NoStream(403 if isinstance(refusal, Forbidden) else 503, f"arc-proxy: {refusal}")
        except RelayUnreachable as err:
            if self.keeper.relay_lost_reason is not None:
                # The shell already has the one "lost the relay" line.
                log.debug("connection %d refused at once: the relay is lost", conn_no)
            else:
                log.warning("connection %d closed: no stream to the relay (%s)", conn_no, err)
            return _NoStream(503, f"arc-proxy: {err}; arc-proxy retries at least every "
                                  f"{BACKOFF_CAP:g} s")
        except (TimeoutError, CliError, tunnel.TunnelClosed, OSError) as err:
            log.warning("connection %d closed: no stream to the relay (%s)", conn_no,
                        str(err) if isinstance(err, CliError) else type(err).__name__)
            cause = str(err) if isinstance(err, CliError) else type(err).__name__
            return _NoStream(503, f"arc-proxy: no stream to the relay ({cause}); "
                                  "see arc-proxy's output")

    def _opened(self, _opening: asyncio.Task[TunnelStream | _NoStream]) -> None:
        self._pending_opens -= 1

    @staticmethod
    async def _first_byte(reader: asyncio.StreamReader, deadline: float) -> bytes:
        """The connection's first byte; empty when it closed or sent nothing in time."""
        try:
            async with asyncio.timeout_at(deadline):
                return await reader.read(1)
        except (TimeoutError, OSError):
            return b""

    @staticmethod
    async def _drop(opening: asyncio.Task[TunnelStream | _NoStream]) -> None:
        """Give up a stream that will not be used (cancelled, or refused locally)."""
        if not opening.done():
            opening.cancel()
        with contextlib.suppress(BaseException):
            outcome = await opening
            if not isinstance(outcome, _NoStream):
                outcome.reset(ErrorCode.CANCEL, "local connection refused")

    async def _serve_connect(self, conn_no: int, first: bytes, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter,
                             opening: asyncio.Task[TunnelStream | _NoStream], deadline: float) -> None:
        """Answer an HTTP request: 200 and the splice for a CONNECT to the
        cluster, otherwise a status whose reason phrase says why, and close."""
        try:
            async with asyncio.timeout_at(deadline):
                request = await read_connect_request(first, reader)
        except HeadRefused as refused:
            await self._drop(opening)
            await self._answer(writer, refusal_response(refused.status, refused.phrase, refused.headers))
            return
        except TimeoutError:
            await self._drop(opening)
            await self._answer(writer, refusal_response(
                408, f"arc-proxy: no complete CONNECT request within {REQUEST_HEAD_WAIT:g} s"))
            return
        except OSError:
            await self._drop(opening)
            writer.close()
            return
        wanted = self.connect_authority
        if wanted is not None and request.authority.lower() != wanted.lower():
            await self._drop(opening)
            await self._answer(writer, refusal_response(
                404, f"arc-proxy on this port serves {wanted}, not {request.authority}: "
                     "check the kubeconfig's server and proxy-url"))
            return
        outcome = await opening
        if isinstance(outcome, _NoStream):
            await self._answer(writer, refusal_response(outcome.status, outcome.phrase))
            return
        writer.write(CONNECT_ESTABLISHED)
        await self._splice(conn_no, outcome, request.rest, reader, writer)

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, response: bytes) -> None:
        """Send a refusal and close."""
        try:
            writer.write(response)
            async with asyncio.timeout(CLIENT_HELLO_WAIT):
                await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def _splice(self, conn_no: int, stream: TunnelStream, first: bytes,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import tunnel

        log.debug("connection %d joined stream %s", conn_no, getattr(stream, "id", "?"))
        try:
            if first:
                await stream.write(first)
            await tunnel.splice(stream, reader, writer)
        except Exception as err:  # splice reports errors as resets; never crash the listener
            log.debug("connection %d splice ended: %s", conn_no, type(err).__name__)
            stream.reset(ErrorCode.CANCEL, "local connection failed")
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
