"""What the demo pods serve on port 8080: a small HTTP responder on loopback,
run in the demo's own process, so that ``kubectl port-forward -n demo
pod/web-... 8080`` followed by ``curl http://127.0.0.1:8080/`` answers.

The sandbox's pods run no processes: the API server forwards a pod port to
the loopback address named by the pod's annotation
``portforward.sandbox.cluster-connect.dev/<port>``; the demo sets it on the
pods it creates (``demo.seed``), pointing here.

One connection at a time (a demo needs no more), each bounded by
:data:`CONNECTION_TIMEOUT`; others wait in the listen backlog.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

__all__ = ["CONNECTION_TIMEOUT", "LISTEN_BACKLOG", "PAGE", "DemoWebServer"]

# Seconds a connection may take to send its request and read the answer: one
# idle client must not hold the only worker for long.
CONNECTION_TIMEOUT = 5.0
# Connections waiting for the worker; beyond it the kernel refuses new ones.
LISTEN_BACKLOG = 16
PAGE = (b"Hello from the cluster-connect demo: this answer came back through "
        b"kubectl port-forward, arc-proxy, the relay, the agent and kube-aad-proxy.\n")


class _Handler(BaseHTTPRequestHandler):
    timeout = CONNECTION_TIMEOUT
    server_version = "cluster-connect-demo"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """No access log: the demo's terminal is the user's, and its stderr stays quiet."""


class _Server(HTTPServer):
    request_queue_size = LISTEN_BACKLOG


class DemoWebServer:
    """The responder on ``127.0.0.1:<free port>``; :meth:`start`, :attr:`address`, :meth:`stop`.

    Args:
        timeout: seconds one connection may take (tests shorten it).
    """

    def __init__(self, timeout: float = CONNECTION_TIMEOUT) -> None:
        handler = type("_BoundedHandler", (_Handler,), {"timeout": timeout})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-web", daemon=True)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, what the pods' port-forward annotation names."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> DemoWebServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(CONNECTION_TIMEOUT + 1)
        self._server.server_close()
