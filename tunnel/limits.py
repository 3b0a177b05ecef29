"""Named limits and timeouts of tunnel v1, each with the reason for its value.

Wire-level values (``INITIAL_*_WINDOW``, ``PROTOCOL_MAX_PAYLOAD``, the target and
reason caps) are part of the protocol: both sides assume them without any
negotiation, so changing one is a protocol version change. Everything in
:class:`Limits` is a local policy that may be configured per process.

The core has no clock: the timeouts below are used by the asyncio adapter
(``tunnel/aio.py``) and live here so that every limit is named in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLOSED_STREAM_MEMORY",
    "CLOSE_TIMEOUT",
    "HANDSHAKE_TIMEOUT",
    "IDLE_TIMEOUT",
    "INITIAL_SESSION_WINDOW",
    "INITIAL_STREAM_WINDOW",
    "MAX_CONCURRENT_STREAMS",
    "MAX_REASON_LENGTH",
    "MAX_RECEIVE_PAYLOAD",
    "MAX_SEND_PAYLOAD",
    "MAX_STREAM_ID",
    "MAX_TARGET_LENGTH",
    "MAX_WINDOW_SIZE",
    "OPEN_TIMEOUT",
    "PING_INTERVAL",
    "PING_PAYLOAD_LENGTH",
    "PING_TIMEOUT",
    "PROTOCOL_MAX_PAYLOAD",
    "Limits",
]

# --- wire constants (protocol, not configurable) -------------------------------

# Every receiver accepts DATA payloads up to this size, so a sender may use any
# payload size up to it without knowing the peer's configuration. 64 KiB keeps one
# websocket message (6-byte header + payload) small enough to buffer per connection
# without thought, yet large enough that frame overhead is irrelevant.
PROTOCOL_MAX_PAYLOAD = 64 * 1024

# Per-stream credit each side starts with for the other (HTTP/2 starts at 64 KiB,
# far too little here). Throughput of one stream is bounded by window / RTT; with
# Python event-loop scheduling adding ~0.5-1 ms per hop, 1 MiB allows ~1-2 GB/s on
# loopback. Memory bound per stream on the receiver is the same 1 MiB.
INITIAL_STREAM_WINDOW = 1024 * 1024

# Per-session credit each side starts with. 16 stream windows: one websocket carries
# many streams, and a few stalled readers (each pinning up to one stream window of
# unacknowledged data) must not starve the rest; the relay's memory per session is
# bounded by this value whatever the number of streams.
INITIAL_SESSION_WINDOW = 16 * 1024 * 1024

# HTTP/2's limit (RFC 9113 section 6.9.1): a window, or a WINDOW increment, above
# this is FLOW_CONTROL_ERROR. Keeps every window in a signed 32-bit integer.
MAX_WINDOW_SIZE = 2**31 - 1

# Stream ids are 31 bits; the top bit of the 32-bit field is reserved (must be 0).
MAX_STREAM_ID = 2**31 - 1

# OPEN carries the target: "<resourceGroup>/<clusterName>" on the client leg or a
# host:port upstream on the agent leg. Azure caps names at 90 + 63 chars; 1 KiB
# leaves room for any host name (253) plus port while bounding what a peer can make
# us hold per pending stream.
MAX_TARGET_LENGTH = 1024

# RESET and GOAWAY carry a short human-readable reason for logs; 256 bytes is a
# sentence, not a stack trace (exception text never goes on the wire).
MAX_REASON_LENGTH = 256

# PING/PONG payloads are opaque 8 bytes, as in HTTP/2: enough for a counter or a
# monotonic timestamp.
PING_PAYLOAD_LENGTH = 8

# --- local policy defaults (see Limits) ----------------------------------------

# DATA payload size the core uses when sending unless told otherwise. 16 KiB frames
# were measured fastest through aiohttp's plain websocket writer early on; once the
# allocator is tuned and frames are batched (tunnel/aio_*.py), 64 KiB frames cost
# less per byte: the asyncio adapter, hence relay, agent and arc-proxy, sends
# PROTOCOL_MAX_PAYLOAD (tunnel/aio_config.py ADAPTER_SEND_PAYLOAD; measured on the
# full path, bench/e2e.py, same run: 5.5 vs 6.6 CPU-s/GB for 64 vs 16 KiB).
MAX_SEND_PAYLOAD = 16 * 1024

# Largest payload accepted from the peer (any frame type). Equal to the protocol
# guarantee; anything larger is FRAME_SIZE_ERROR and the session ends.
MAX_RECEIVE_PAYLOAD = PROTOCOL_MAX_PAYLOAD

# Concurrent streams the PEER may have open on one session. kubectl opens a handful
# of connections per command, arc-proxy multiplexes a whole laptop's worth; 1024
# leaves room for many parallel watches while bounding per-stream bookkeeping
# (session window still bounds buffered bytes). Above it: RESET TOO_MANY_STREAMS.
MAX_CONCURRENT_STREAMS = 1024

# How many streams we reset ourselves are remembered so that DATA the peer had in
# flight for them is dropped silently (credit returned) instead of answered with a
# RESET STREAM_CLOSED. Bounded so that a peer cannot grow it; forgetting one only
# costs an extra, ignored RESET.
CLOSED_STREAM_MEMORY = 1024

# --- timeouts used by the adapter (seconds) -------------------------------------

# OPEN -> OPEN_OK. The agent has to dial kube-aad-proxy (in-cluster, ms) and the
# relay has to find the agent session; 30 s matches kubectl's default dial timeout.
OPEN_TIMEOUT = 30.0

# A stream with no traffic either way for this long is RESET IDLE_TIMEOUT. Watches
# and `logs -f` stay silent for minutes and the API server ends watches itself after
# 30-60 min (--min-request-timeout 1800, randomised up to 2x), so one hour never
# cuts a legitimate stream; 0 turns it off.
IDLE_TIMEOUT = 3600.0

# Websocket upgrade plus authentication must finish within this, so half-open
# handshakes cannot pin relay resources.
HANDSHAKE_TIMEOUT = 10.0

# Send a PING after this much silence. Below the 60 s idle timeout of common load
# balancers and NATs, so a quiet session is never dropped by a middlebox.
PING_INTERVAL = 20.0

# A PING unanswered for this long means the peer (or the path) is dead: the session
# ends with PING_TIMEOUT, and the agent reconnects within ~PING_INTERVAL+PING_TIMEOUT.
PING_TIMEOUT = 20.0

# After GOAWAY/close frames are sent, wait at most this for the websocket close
# handshake before dropping the TCP connection.
CLOSE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Local limits of one :class:`tunnel.connection.Connection`.

    Attributes:
        max_send_payload: DATA payload size used when sending (1..PROTOCOL_MAX_PAYLOAD).
        max_receive_payload: Largest payload accepted (>= PROTOCOL_MAX_PAYLOAD).
        max_concurrent_streams: Streams the peer may have open at once.
        stream_window: Receive window granted per stream (>= INITIAL_STREAM_WINDOW;
            the excess is granted with a WINDOW frame right after OPEN/OPEN_OK).
        session_window: Receive window granted for the session
            (>= INITIAL_SESSION_WINDOW; the excess is granted at start-up).
    """

    max_send_payload: int = MAX_SEND_PAYLOAD
    max_receive_payload: int = MAX_RECEIVE_PAYLOAD
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    stream_window: int = INITIAL_STREAM_WINDOW
    session_window: int = INITIAL_SESSION_WINDOW

    def __post_init__(self) -> None:
        if not 1 <= self.max_send_payload <= PROTOCOL_MAX_PAYLOAD:
            raise ValueError(f"max_send_payload must be in 1..{PROTOCOL_MAX_PAYLOAD}")
        if self.max_receive_payload < PROTOCOL_MAX_PAYLOAD:
            raise ValueError(f"max_receive_payload must be >= {PROTOCOL_MAX_PAYLOAD}")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be >= 1")
        if not INITIAL_STREAM_WINDOW <= self.stream_window <= MAX_WINDOW_SIZE:
            raise ValueError(f"stream_window must be in {INITIAL_STREAM_WINDOW}..{MAX_WINDOW_SIZE}")
        if not INITIAL_SESSION_WINDOW <= self.session_window <= MAX_WINDOW_SIZE:
            raise ValueError(
                f"session_window must be in {INITIAL_SESSION_WINDOW}..{MAX_WINDOW_SIZE}"
            )
