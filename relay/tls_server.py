"""Server-side TLS over ``ssl.MemoryBIO``, with small per-connection buffers.

Why: asyncio's TLS transport keeps a 256 KiB read buffer per connection for
its whole life, most of what an idle agent costs the relay. Here the socket
transport is plain TCP reading into one :class:`SharedReadBuffer` per listener
(each read is fed to TLS before the loop reads any other socket; only bytes the
application is not ready for are copied out), TLS runs in
an ``ssl.SSLObject`` over two ``MemoryBIO`` objects, and ciphertext is fed in
slices of ``_SLICE`` bytes and drained every ``_FLUSH_SIZE`` bytes so neither
BIO (OpenSSL's memory BIO never shrinks) grows past a few TLS records.

Theory of operation. :class:`TlsTerminator` is the socket's protocol. On
accept it takes a pre-authentication slot (or closes at once) and arms the
handshake timer. Ciphertext goes into the incoming BIO; until the handshake is
done, ``do_handshake`` runs; then plaintext is read record by record and
handed to the application protocol (``app_factory()``, aiohttp's
``web.Server`` wrapped in ``relay.edge.HeadGuard``) through
:class:`TlsAppTransport`, which implements the public ``asyncio.Transport``
interface. Flow control both ways: the socket's pause/resume_writing reach the
application protocol; the application's pause_reading stops the socket and
keeps undecrypted bytes (at most one socket read) until resume_reading.

The costly step of a handshake (the ClientHello: key exchange and signature,
~0.6 ms) runs on a small thread pool when the listener has one
(``listener.tls_handshake_threads``): OpenSSL releases the GIL there, so the
event loop keeps serving ``/readyz``, ``/metrics`` and established sessions
while thousands of agents reconnect, and a second core does handshakes.
While that step runs, the loop touches neither BIO: bytes that arrive wait in
the backlog. The cheap later steps run inline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
from collections.abc import Callable
from typing import Any

from relay.edge import EdgeGate, peer_label
from tunnel import PreAuthSlot

log = logging.getLogger("relay")

# Ciphertext fed to the incoming BIO at a time. The BIO keeps its largest
# size, so a connection that carried bulk data keeps ~this plus one partial
# record (~80 KiB; an idle agent's stays at a few KiB). Smaller slices cost
# CPU (bench/relay_tls.py, 512 MiB up: 16 KiB slices +17-31 % CPU per GB over
# asyncio's TLS, 32 KiB +7 %, 64 KiB +3 %).
_SLICE = 64 * 1024
# Plaintext read per SSLObject.read call: OpenSSL returns one record at most.
_READ_SIZE = 16 * 1024
# One socket read at most (asyncio's own default read size).
_SOCKET_READ_SIZE = 256 * 1024
# Plaintext handed to the application per call, at most (one socket read of
# asyncio's, 256 KiB, decrypts to less).
_DELIVER_SIZE = 256 * 1024
# Ciphertext sent per socket write while encrypting a large write: fewer
# send() calls; the outgoing BIO stays at ~this plus one record (as _SLICE).
_FLUSH_SIZE = 64 * 1024


class SharedReadBuffer:
    """The buffer every connection of one listener reads its socket into.

    Safe because one event loop runs them all and :meth:`TlsTerminator.buffer_updated`
    consumes (or copies) the bytes before it returns.
    """

    __slots__ = ("view",)

    def __init__(self, size: int = _SOCKET_READ_SIZE) -> None:
        self.view = memoryview(bytearray(size))


class TlsTerminator(asyncio.BufferedProtocol):
    """The socket side of one TLS connection (module docstring).

    Args:
        ssl_context: The server context.
        app_factory: Makes the application protocol (given the slot taken at accept).
        gate: The pre-authentication gate.
        handshake_timeout: Seconds from accept to a finished TLS handshake.
        live: The set of terminators still in their handshake (closed on stop).
        read_buffer: The listener's shared socket read buffer.
        handshake_pool: Runs the ClientHello step of the handshake (None: inline).
    """

    __slots__ = (
        "_app_reading",
        "_backlog",
        "_closed",
        "_handshaken",
        "_incoming",
        "_offloaded",
        "_offloading",
        "_outgoing",
        "_sock_paused_writing",
        "_timer",
        "_tls",
        "app",
        "app_factory",
        "app_transport",
        "gate",
        "handshake_pool",
        "handshake_timeout",
        "live",
        "read_buffer",
        "slot",
        "sock",
        "ssl_context",
    )

    def __init__(self, ssl_context: ssl.SSLContext,
                 app_factory: Callable[[PreAuthSlot], asyncio.Protocol],
                 gate: EdgeGate, handshake_timeout: float, live: set[TlsTerminator],
                 read_buffer: SharedReadBuffer,
                 handshake_pool: concurrent.futures.Executor | None = None) -> None:
        self.ssl_context = ssl_context
        self.handshake_pool = handshake_pool
        self.app_factory = app_factory
        self.gate = gate
        self.handshake_timeout = handshake_timeout
        self.live = live
        self.read_buffer = read_buffer
        self.sock: asyncio.Transport | None = None
        self.app: asyncio.Protocol | None = None
        self.app_transport: TlsAppTransport | None = None
        self.slot: PreAuthSlot | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshaken = False
        # A handshake step is running on the pool (the BIOs are its until it ends);
        # the step that answered the ClientHello has run there.
        self._offloading = False
        self._offloaded = False
        self._app_reading = True
        self._sock_paused_writing = False
        # Ciphertext not yet fed to the BIO (the application paused reading).
        self._backlog = memoryview(b"")
        self._closed = False

    # -- socket callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.sock = transport
        self.slot = self.gate.admit()
        if self.slot is None:
            self._closed = True
            transport.abort()
            return
        self._tls = self.ssl_context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.live.add(self)
        self._timer = asyncio.get_running_loop().call_later(self.handshake_timeout, self._handshake_timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        data = self.read_buffer.view[:nbytes]
        if self._offloading:  # the pool owns the BIOs: keep the bytes, out of the shared buffer
            self._backlog = memoryview(self._backlog.tobytes() + data.tobytes())
            return
        if self._backlog:  # not expected: the socket is paused while a backlog exists
            self._backlog = memoryview(self._backlog.tobytes() + data.tobytes())
        else:
            self._backlog = data
        self._pump()
        if self._backlog and self._backlog.obj is self.read_buffer.view.obj:
            # The application paused mid-read: keep the rest, out of the shared buffer.
            self._backlog = memoryview(self._backlog.tobytes())

    def eof_received(self) -> bool | None:
        # A TCP FIN without close_notify: the application sees the end either way.
        if self.app is not None and not self._closed and self.app.eof_received():
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._backlog = memoryview(b"")
        self.live.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.slot is not None:
            self.slot.release()
        if self.app is not None:
            app, self.app = self.app, None
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._sock_paused_writing = True
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        self._sock_paused_writing = False
        if self.app is not None:
            self.app.resume_writing()

    # -- TLS -------------------------------------------------------------------------

    def _pump(self) -> None:
        """Feed ciphertext, finish the handshake, hand plaintext to the application."""
        tls = self._tls
        assert tls is not None
        plaintext: list[bytes] = []
        size = 0
        try:
            while not self._closed:
                if not self._handshaken:
                    if self.handshake_pool is not None and not self._offloaded:
                        if not self._feed():
                            break  # nothing new for the ClientHello step: wait for bytes
                        while self._feed():
                            pass
                        self._offload_handshake_step(tls, self.handshake_pool)
                        return
                    if not self._handshake_step(tls) and not self._feed():
                        break
                    continue
                if not self._app_reading:
                    break
                try:
                    chunk = tls.read(_READ_SIZE)
                except ssl.SSLWantReadError:
                    if not self._feed():
                        break
                    continue
                except ssl.SSLZeroReturnError:
                    chunk = b""
                if not chunk:
                    self._deliver(plaintext)
                    plaintext = []
                    self._peer_closed()
                    break
                plaintext.append(chunk)
                size += len(chunk)
                if size >= _DELIVER_SIZE:
                    self._deliver(plaintext)
                    plaintext, size = [], 0
        except ssl.SSLError as exc:
            self._fail("tls error", exc.reason or exc.__class__.__name__)
            return
        self._deliver(plaintext)
        self.flush()
        if self._app_reading and self.sock is not None and not self._closed and not self.sock.is_reading():
            self.sock.resume_reading()

    def _deliver(self, plaintext: list[bytes]) -> None:
        """One ``data_received`` for the records of one socket read (as asyncio's
        TLS transport does): the application's per-call work is paid once."""
        if plaintext and self.app is not None and not self._closed:
            self.app.data_received(plaintext[0] if len(plaintext) == 1 else b"".join(plaintext))

    def _feed(self) -> bool:
        """Move up to one slice of ciphertext into the BIO; False when none is left."""
        if not self._backlog:
            return False
        self._incoming.write(self._backlog[:_SLICE])
        self._backlog = self._backlog[_SLICE:]
        return True

    def _handshake_step(self, tls: ssl.SSLObject) -> bool:
        """One ``do_handshake``; True once it is done (the application then starts)."""
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return False
        self._handshake_done()
        return True

    def _offload_handshake_step(self, tls: ssl.SSLObject, pool: concurrent.futures.Executor) -> None:
        """Run one ``do_handshake`` on ``pool``; :meth:`_offloaded_step_done` goes on."""
        self._offloading = True
        step = asyncio.get_running_loop().run_in_executor(pool, _handshake_in_thread, tls)
        step.add_done_callback(self._offloaded_step_done)

    def _offloaded_step_done(self, step: asyncio.Future[bool]) -> None:
        self._offloading = False
        if self._closed:
            return  # timed out, lost or refused meanwhile
        if step.cancelled():  # the listener is closing: its pool is gone
            self.abort()
            return
        exc = step.exception()
        if isinstance(exc, ssl.SSLError):
            self._fail("tls error", exc.reason or exc.__class__.__name__)
            return
        if exc is not None:  # not expected from do_handshake; never from a peer
            log.warning("edge closed reason='tls handshake failed' error=%s", type(exc).__name__)
            self.abort()
            return
        # Answered (the server flight is out): later steps are cheap, run inline.
        self._offloaded = self._offloaded or bool(self._outgoing.pending)
        self.flush()
        if step.result():
            self._handshake_done()
        self._pump()

    def _handshake_done(self) -> None:
        """The handshake finished: start the application."""
        self._handshaken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.live.discard(self)
        assert self.sock is not None and self.slot is not None
        self.app_transport = TlsAppTransport(self)
        self.app = self.app_factory(self.slot)
        self.app.connection_made(self.app_transport)
        if self._sock_paused_writing and self.app is not None:
            self.app.pause_writing()

    def _peer_closed(self) -> None:
        """close_notify (or a clean end) from the peer: tell the application."""
        self._app_reading = False
        if self.app is not None and not self.app.eof_received():
            self.close()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self.gate.stats.closed["tls handshake timeout"] += 1
        self._fail("tls handshake timeout", f"not complete after {self.handshake_timeout:g}s")

    def _fail(self, reason: str, detail: str) -> None:
        if reason != "tls handshake timeout":
            self.gate.stats.closed[reason] += 1
        if self.sock is not None:
            log.info("edge closed peer=%s reason=%r detail=%r", peer_label(self.sock), reason, detail)
        self.flush()  # a TLS alert, if OpenSSL queued one
        self.abort()

    # -- used by TlsAppTransport ---------------------------------------------------

    @property
    def tls_object(self) -> ssl.SSLObject | None:
        """The TLS session (None if refused before TLS started)."""
        return self._tls

    @property
    def closed(self) -> bool:
        """True once closing or closed."""
        return self._closed

    @property
    def app_reading(self) -> bool:
        """False while the application has paused reading."""
        return self._app_reading and not self._closed

    def flush(self) -> None:
        """Send the ciphertext OpenSSL produced (not while the pool owns the BIOs)."""
        if self._offloading:
            return
        if self._outgoing.pending and self.sock is not None and not self.sock.is_closing():
            self.sock.write(self._outgoing.read())

    def encrypt(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data`` slice by slice (keeps the outgoing BIO small)."""
        if self._closed or self._tls is None or self.sock is None or self.sock.is_closing():
            return
        view = memoryview(data)
        try:
            for i in range(0, len(view), _READ_SIZE):
                self._tls.write(view[i:i + _READ_SIZE])
                if self._outgoing.pending >= _FLUSH_SIZE:
                    self.flush()
        except ssl.SSLError as exc:
            self._fail("tls error", exc.reason or exc.__class__.__name__)
            return
        self.flush()

    def set_app_reading(self, reading: bool) -> None:
        """The application paused or resumed reading."""
        if self._app_reading == reading or self._closed or self.sock is None:
            return
        self._app_reading = reading
        if not reading:
            self.sock.pause_reading()
        else:
            # Not re-entrantly: the application is inside its own resume_reading.
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if not self._closed and self._app_reading:
            self._pump()

    def close(self) -> None:
        """Send close_notify after what is queued, then close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._tls is not None and self._handshaken:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass  # the peer's close_notify is not awaited: we close anyway
        self.flush()
        if self.sock is not None:
            self.sock.close()

    def abort(self) -> None:
        """Close the socket now, unsent data dropped."""
        self._closed = True
        if self.sock is not None:
            self.sock.abort()


def _handshake_in_thread(tls: ssl.SSLObject) -> bool:
    """One handshake step on a pool thread (OpenSSL runs without the GIL);
    True once the handshake is complete."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


class TlsAppTransport(asyncio.Transport):
    """What the application protocol sees: plaintext over :class:`TlsTerminator`."""

    def __init__(self, terminator: TlsTerminator) -> None:
        super().__init__()
        self._terminator = terminator
        assert terminator.sock is not None
        self._sock = terminator.sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tls = self._terminator.tls_object
        if name == "sslcontext":
            return self._terminator.ssl_context
        if name == "ssl_object":
            return tls
        if tls is not None and name == "peercert":
            return tls.getpeercert()
        if tls is not None and name == "cipher":
            return tls.cipher()
        if tls is not None and name == "compression":
            return tls.compression()
        return self._sock.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._terminator.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._terminator.app is not None
        return self._terminator.app

    def is_closing(self) -> bool:
        return self._terminator.closed or self._sock.is_closing()

    def close(self) -> None:
        self._terminator.close()

    def abort(self) -> None:
        self._terminator.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._terminator.encrypt(data)

    def writelines(self, list_of_data: Any) -> None:
        self._terminator.encrypt(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False  # as asyncio's TLS transport: TLS has no half-close here

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports cannot write EOF")

    def pause_reading(self) -> None:
        self._terminator.set_app_reading(False)

    def resume_reading(self) -> None:
        self._terminator.set_app_reading(True)

    def is_reading(self) -> bool:
        return self._terminator.app_reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        # Ciphertext is written to the socket at once: its buffer is the one to bound.
        self._sock.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._sock.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._sock.get_write_buffer_limits()
