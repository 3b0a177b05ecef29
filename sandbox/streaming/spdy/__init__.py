"""SPDY/3.1 as kubectl speaks it (moby/spdystream): a sans-I/O frame codec
and an asyncio server session."""

from __future__ import annotations

from sandbox.streaming.spdy.frames import SpdyConnection, SpdyProtocolError
from sandbox.streaming.spdy.session import SpdySession, SpdyStream

__all__ = ["SpdyConnection", "SpdyProtocolError", "SpdySession", "SpdyStream"]
