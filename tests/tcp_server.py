"""A loopback TCP server for tests: one thread per connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator


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
