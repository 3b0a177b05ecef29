"""The demo pods' web responder: answers GET with the demo page, and an idle
connection cannot hold its only worker longer than the connection timeout."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

from demo.web import PAGE, DemoWebServer


@pytest.fixture
def web() -> Iterator[DemoWebServer]:
    server = DemoWebServer(timeout=0.5).start()
    yield server
    server.stop()


def test_web_answers_get_with_the_demo_page(web: DemoWebServer) -> None:
    """GET / on the loopback address: 200 and the page."""
    assert web.address.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"http://{web.address}/", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == PAGE


def test_web_closes_an_idle_connection_and_then_serves_the_next(web: DemoWebServer) -> None:
    """A client that sends nothing sees its connection closed (EOF) once the
    timeout passes; a client queued behind it is then served."""
    host, port = web.address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as idle:
        with urllib.request.urlopen(f"http://{web.address}/", timeout=30) as resp:
            assert resp.read() == PAGE
        assert idle.recv(1) == b""
