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
    "MAX_QUEUED_REPLIES",
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
    "STREAM_WINDOW_BUDGET",
    "Limits",
]

# --- wire constants (protocol, not configurable) -------------------------------

# Every receiver accepts DATA payloads up to this size, so a sender may use any
# payload size up to it without knowing the peer's configuration. 64 KiB keeps one
# websocket message (6-byte header + payload) small enough to buffer per connection
# without thought, yet large enough that frame overhead is irrelevant.
PROTOCOL_MAX_PAYLOAD = 64 * 1024

# Per-stream credit each side starts with for the other: one maximal frame, as
# HTTP/2's 64 KiB. Small on purpose: a receiver holds up to a stream's window for
# a reader that stopped reading, and a session may carry 1,024 streams, so this
# value times the stream limit is the part of a receiver's memory bound that no
# policy can take back (64 MiB per side's streams per session at the defaults). Windows then grow
# while their reader drains them (auto-tuning, ``Limits.stream_window``), so one
# fast stream still reaches the adapter's 4 MiB after a few round trips.
INITIAL_STREAM_WINDOW = PROTOCOL_MAX_PAYLOAD

# Per-session credit each side starts with. It bounds the bytes in flight on the
# wire only: a receiver returns session credit as soon as DATA is received into its
# stream's buffer (which the stream window bounds), never waiting for a reader, so
# stalled readers - any number - cannot starve the session (nghttp2 / Go x/net
# http2 practice). 16 MiB is several stream windows in flight at once.
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
# leaves room for many parallel watches while bounding per-stream bookkeeping and
# buffers (each stream holds at most its window). A stream stops counting as soon
# as it is closed both ways or reset. Above it: RESET TOO_MANY_STREAMS.
MAX_CONCURRENT_STREAMS = 1024

# Ceiling of the bytes all of a session's streams together may have grown their
# receive windows above INITIAL_STREAM_WINDOW (auto-tuning). With it a receiver's
# buffered bytes per session are at most (Limits.buffer_bound)
#   2 * max_concurrent_streams * INITIAL_STREAM_WINDOW + stream_window_budget
# (the peer's streams and ours, each side capped by the same stream limit: 128 +
# 32 = 160 MiB at the defaults) whatever the readers do. 32 MiB lets 8 streams
# run at the full 4 MiB adapter window at once; beyond it new growth is simply
# not granted (those streams keep the window they have), so a stalled stream
# never takes credit from another, it only stops others from growing further.
STREAM_WINDOW_BUDGET = 32 * 1024 * 1024

# Control frames the core queued in answer to the peer's frames (PONG, RESET
# answers and refusals) that the adapter has not taken with data_to_send() yet.
# The adapter takes them on every write unless the websocket is not draining, i.e.
# the peer does not read; a peer that keeps sending PINGs (or frames that earn a
# RESET) without reading would otherwise grow our memory without end (HTTP/2's
# "ping flood", CVE-2019-9512; Go x/net/http2 caps it at 10,000). A legitimate
# peer has at most one PING outstanding and at most a refusal per OPEN, so 4,096
# is never reached by one; above it the session ends with GOAWAY
# ENHANCE_YOUR_CALM. Memory: about 4,096 * 60 B.
MAX_QUEUED_REPLIES = 4096

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

# The dialling side (agent, arc-proxy) sends a PING this often; the accepting side
# (relay) only after 1.5 times this long without one (aio_keepalive.py). Below the 60 s idle
# timeout of common load balancers, proxies and NATs, so a quiet session is never
# dropped by a middlebox; 30 s rather than 20 s: every idle agent's PING costs the
# relay ~0.3 ms of CPU (TLS record both ways, websocket parse, a send), 5,000
# agents 5 % of a core at 20 s (bench.scale idle_cpu_percent).
PING_INTERVAL = 30.0

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
        stream_window: Largest receive window a stream may grow to
            (>= INITIAL_STREAM_WINDOW). Every stream starts at
            INITIAL_STREAM_WINDOW; its window doubles each time credit is
            returned while its reader keeps up, up to this value.
        session_window: Receive window granted for the session
            (>= INITIAL_SESSION_WINDOW; the excess is granted at start-up).
            Bounds bytes in flight, not buffered bytes (credit comes back on receipt).
        stream_window_budget: Total growth above INITIAL_STREAM_WINDOW that the
            session's streams may hold at once (see STREAM_WINDOW_BUDGET).
        max_queued_replies: Control replies queued but not yet taken by
            ``data_to_send()`` above which the session fails with
            ENHANCE_YOUR_CALM (see MAX_QUEUED_REPLIES).
    """

    max_send_payload: int = MAX_SEND_PAYLOAD
    max_receive_payload: int = MAX_RECEIVE_PAYLOAD
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    stream_window: int = INITIAL_STREAM_WINDOW
    session_window: int = INITIAL_SESSION_WINDOW
    stream_window_budget: int = STREAM_WINDOW_BUDGET
    max_queued_replies: int = MAX_QUEUED_REPLIES

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
        if self.stream_window_budget < 0:
            raise ValueError("stream_window_budget must be >= 0")
        if self.max_queued_replies < 1:
            raise ValueError("max_queued_replies must be >= 1")

    @property
    def buffer_bound(self) -> int:
        """Most bytes a receiver ever holds unread in one session: every stream
        (the peer's and ours, each side capped at ``max_concurrent_streams``,
        assuming the peer applies the same limit) at its initial window, plus
        the whole growth budget."""
        return (
            2 * self.max_concurrent_streams * INITIAL_STREAM_WINDOW
            + min(
                self.stream_window_budget,
                2 * self.max_concurrent_streams * (self.stream_window - INITIAL_STREAM_WINDOW),
            )
        )
