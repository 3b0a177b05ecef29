"""Streaming subresources of the sandbox API server: exec, attach and
port-forward over websocket (v5/v4 channel protocols, SPDY-over-websocket) and
SPDY/3.1."""

from __future__ import annotations

from sandbox.streaming.request import UpgradeRequest

__all__ = ["UpgradeRequest"]
