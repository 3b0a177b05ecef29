"""Fixtures shared by the tunnel adapter tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["aiohttp", "native"])
def client_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per websocket implementation of the dialling side:
    ``TunnelConfig()`` picks it up from ``$ARC_TUNNEL_TRANSPORT`` (the server
    side stays aiohttp's)."""
    transport: str = request.param
    monkeypatch.setenv("ARC_TUNNEL_TRANSPORT", transport)
    return transport
