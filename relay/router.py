"""Routes one client stream to the cluster's agent session.

For each OPEN on a client session: authorise (cluster-user or admin on the
cluster), find the live agent session (waiting a short grace for an agent that
is reconnecting, e.g. after a relay restart; with ``peering``, on another
replica through a peer link when it is not live here: relay/peering.py), open
a stream on it, and only
then accept the client's stream and join the two at the frame level
(``tunnel.join_streams``). Nothing inside DATA is parsed; memory per stream
is bounded by the tunnel's windows because bytes move from one stream to the
other only as fast as the far side grants credit, and the near side gets its
credit back only for bytes passed on.

Memory per idle routed stream (issue 11: <= 4 KiB, ``bench.relay_memory``):
once joined, the handler returns, so its task and coroutine frames are freed;
what stays is the two streams, the bridge and one ``RoutedStream`` (slotted)
that undoes the accounting (shares, live streams, the open-streams gauge)
when the join ends. The byte meters are shared by all streams; the strings a
routed stream keeps (cluster id, scope, share holder) are interned.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from identity import Principal
from relay.registry import cluster_id, valid_name
from relay.revocation import LiveStream
from relay.roles import cluster_scope
from relay.shares import SessionShare
from relay.state import RelayState
from relay.status import is_registered
from tunnel import (
    UPSTREAM_TARGET,
    ErrorCode,
    StreamRefused,
    TunnelClosed,
    TunnelSession,
    TunnelStream,
    join_streams,
)

log = logging.getLogger("relay")

# While a stream waits (agent_grace_seconds) for its cluster's agent, presence
# is looked up again this often: the agent may reconnect to another replica.
FORWARD_POLL_SECONDS = 0.25

# Codes that mean "this agent session cannot take new streams" rather than
# "the cluster refused": the router then waits for the agent's next session.
_RETRY_ON_OTHER_SESSION = {ErrorCode.GOING_AWAY, ErrorCode.REFUSED_STREAM}


class DataRecorder:
    """Test hook: appends every DATA byte the router forwards to a file, so a
    test can prove the relay never saw plaintext. Off unless configured
    (``debug.record_data_file`` or ``$ARC_RELAY_RECORD_DATA_FILE``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab", buffering=0)

    def record(self, data: bytes | memoryview) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


def parse_target(target: bytes) -> tuple[str, str] | None:
    """``b"<rg>/<name>"`` -> (rg, name), or None when malformed."""
    try:
        text = target.decode("utf-8")
    except UnicodeDecodeError:
        return None
    rg, sep, name = text.partition("/")
    if not sep or not valid_name(rg) or not valid_name(name):
        return None
    return rg, name


async def _open_upstream(state: RelayState, cid: str) -> TunnelStream | tuple[ErrorCode | int, str]:
    """A stream on the cluster's live agent session (here, or on another
    replica through a peer link), or (code, reason) to reset with."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.config.agent_grace_seconds
    peering = state.peering
    tried: TunnelSession | None = None  # the local session that refused: going away
    while True:
        session = state.directory.get(cid)
        if session is not None and session is not tried:
            try:
                return await session.open_stream(UPSTREAM_TARGET, timeout=state.config.open_timeout_seconds)
            except StreamRefused as exc:
                if exc.code == ErrorCode.TOO_MANY_STREAMS:
                    return exc.code, (f"the agent of cluster {cid} has all its streams in use "
                                      "(agent limits.max_concurrent_streams); retry when some close")
                if exc.code not in _RETRY_ON_OTHER_SESSION:
                    return exc.code, exc.reason or "agent refused the stream"
            except TunnelClosed:
                pass
            # That session is going away: an agent honouring GOAWAY redials at
            # once (here or, with several replicas, perhaps elsewhere).
            tried = session
        if peering is not None and (session is None or session is tried):
            # Not live here: the agent may be live on another replica (presence).
            forwarded = await peering.open_forwarded(cid)
            if forwarded is not None:
                return forwarded
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        # Within the grace, wait for the agent's next session here; with
        # peering, look at presence again every poll (it may come back elsewhere).
        wait = min(remaining, FORWARD_POLL_SECONDS) if peering is not None else remaining
        await state.directory.wait_for(cid, wait, not_this=tried)
    return ErrorCode.TARGET_UNAVAILABLE, f"cluster {cid} is offline"


BytesMeter = Callable[[bytes | memoryview], None]
# The meters of a relay's byte counter (``metrics.bytes``), one per direction,
# shared by every stream: a closure per stream and direction cost ~0.2 KiB of
# an idle stream's memory. Keyed weakly by the labelled metric, which the
# meters do not reference (they hold its children), so a relay's entry goes
# with its metrics.
_shared_meters: weakref.WeakKeyDictionary[Any, dict[str, BytesMeter]] = weakref.WeakKeyDictionary()


def meter(byte_counter: Any, direction: str, recorder: DataRecorder | None) -> BytesMeter:
    """The per-chunk callback of one direction: count (and optionally record)
    every chunk the bridge forwards."""
    if recorder is None:
        meters = _shared_meters.get(byte_counter)
        if meters is None:
            meters = _shared_meters[byte_counter] = {}
        shared = meters.get(direction)
        if shared is None:
            inc = byte_counter.labels(direction).inc

            def count(data: bytes | memoryview) -> None:
                inc(len(data))
            shared = meters[direction] = count
        return shared
    # A test hook (off in production): a closure per stream is fine here.
    inc = byte_counter.labels(direction).inc
    record = recorder.record

    def count_and_record(data: bytes | memoryview) -> None:
        inc(len(data))
        record(data)
    return count_and_record


def principal_key(principal: Principal) -> str:
    """Who holds a stream share: issuer plus immutable object id (interned:
    every stream of a principal keeps the same string)."""
    return sys.intern(f"{principal.issuer} {principal.oid}")


class RoutedStream:
    """What one routed stream holds until its join ends, and the undoing of
    its accounting then (``ended``, the join's ``on_done``)."""

    __slots__ = ("holder", "live", "share", "state")

    def __init__(self, state: RelayState, share: SessionShare, holder: str, live: LiveStream) -> None:
        self.state = state
        self.share = share
        self.holder = holder
        self.live = live

    def ended(self) -> None:
        """The pair ended (both streams closed): give back what routing took."""
        state = self.state
        state.live_streams.discard(self.live)
        state.metrics.streams_open.dec()
        state.shares.release(self.share, self.holder, self.live.cluster)


async def route_stream(state: RelayState, principal: Principal, stream: TunnelStream,
                       recorder: DataRecorder | None = None, *,
                       share: SessionShare | None = None) -> None:
    """``on_stream`` handler of a client session: authorise, route, splice.

    Args:
        state: the relay's shared state.
        principal: who the client session authenticated as.
        stream: the pending stream (OPEN received, not yet accepted).
        recorder: test hook that records forwarded DATA (None: off).
        share: the client session's stream share (None: a share of its own).
    """
    metrics = state.metrics
    started = time.monotonic()
    parsed = parse_target(stream.target)
    if parsed is None:
        metrics.streams_total.labels("bad_target").inc()
        stream.reject(ErrorCode.NOT_FOUND, "target must be '<resourceGroup>/<clusterName>'")
        return
    rg, name = parsed
    cid = sys.intern(cluster_id(rg, name))
    scope = sys.intern(cluster_scope(rg, name))
    if principal.expires_at < time.time():
        metrics.streams_total.labels("forbidden").inc()
        stream.reject(ErrorCode.FORBIDDEN, "token expired; reconnect with a fresh token")
        return
    if not await state.may_connect(principal, scope):
        metrics.streams_total.labels("forbidden").inc()
        state.refusals.refused("stream forbidden", principal.name, cid, "no connect role")
        stream.reject(ErrorCode.FORBIDDEN, f"principal {principal.name} has no cluster-user or admin "
                                           f"role at scope {scope} (or /resourceGroups/{rg} or /)")
        return
    if not await is_registered(state.registry, cid):
        metrics.streams_total.labels("not_found").inc()
        stream.reject(ErrorCode.NOT_FOUND, f"cluster {cid} is not registered")
        return
    share = share if share is not None else state.shares.new_session()
    holder = principal_key(principal)
    over = state.shares.acquire(share, holder, cid)
    if over is not None:
        metrics.streams_total.labels("over_share").inc()
        state.refusals.refused("stream over share", principal.name, cid, "too many streams")
        stream.reject(ErrorCode.TOO_MANY_STREAMS, over)
        return
    joined = False
    try:
        joined = await _route_within_share(state, principal, stream, cid, scope, started,
                                           recorder, share, holder)
    finally:
        if not joined:
            state.shares.release(share, holder, cid)


async def _route_within_share(state: RelayState, principal: Principal, stream: TunnelStream,
                              cid: str, scope: str, started: float,
                              recorder: DataRecorder | None, share: SessionShare,
                              holder: str) -> bool:
    """Open the agent's stream, accept the client's, join them.

    Returns:
        True once the join owns the pair: its ``RoutedStream.ended`` then
        releases the share, else the caller does.
    """
    metrics = state.metrics
    upstream = await _open_upstream(state, cid)
    if isinstance(upstream, tuple):
        code, reason = upstream
        outcome = "offline" if code == ErrorCode.TARGET_UNAVAILABLE else "refused"
        metrics.streams_total.labels(outcome).inc()
        state.refusals.refused(f"stream {outcome}", principal.name, cid, str(getattr(code, "name", code)))
        stream.reject(cast(ErrorCode, code), reason)
        return False
    try:
        stream.accept()
    except Exception:
        # The client gave up while we were opening upstream.
        upstream.reset(ErrorCode.CANCEL, "client went away")
        metrics.streams_total.labels("client_gone").inc()
        return False
    metrics.open_latency.observe(time.monotonic() - started)
    metrics.streams_total.labels("routed").inc()
    metrics.streams_open.inc()
    log.debug("stream routed principal=%s cluster=%s", principal.name, cid)
    # Revoking the role or the token's expiry ends the stream (relay/revocation.py).
    live = state.live_streams.add(principal, scope, cid, stream, upstream)
    routed = RoutedStream(state, share, holder, live)
    # Frame-level forwarding (no task per pair, no copy): DATA is passed from
    # one session to the other as credit allows (tunnel/aio_forward.py). This
    # handler returns now; the join closes both streams when the pair ends and
    # then calls routed.ended.
    join_streams(
        stream, upstream,
        on_a_to_b=meter(metrics.bytes, "client_to_agent", recorder),
        on_b_to_a=meter(metrics.bytes, "agent_to_client", recorder),
        on_done=routed.ended,
    )
    return True
