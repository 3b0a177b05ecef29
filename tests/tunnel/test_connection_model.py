"""Stateful model of two linked cores: random interleavings, exact bytes, conserved credit."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.tunnel.helpers import TunnelPair
from tunnel import (
    Connection,
    DataReceived,
    ErrorCode,
    Frame,
    FrameType,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamResetEvent,
    StreamState,
)
from tunnel.events import Event
from tunnel.limits import INITIAL_SESSION_WINDOW


def _open(pair: TunnelPair, opener: Connection) -> int:
    """Open and accept one stream from ``opener``."""
    acceptor = pair.peer(opener)
    stream_id = opener.open_stream(b"t")
    assert pair.deliver(acceptor) == [StreamOpened(stream_id, b"t")]
    acceptor.accept_stream(stream_id)
    assert pair.deliver(opener) == [StreamAccepted(stream_id)]
    return stream_id


# --- stateful model ---------------------------------------------------------------

# Stream bytes are a pattern keyed by (stream, direction) offset, so the model only
# keeps counters and still checks every byte.
_PATTERN = bytes(range(251)) * ((1 << 22) // 251 + 2)


def _expected(seed: int, offset: int, size: int) -> bytes:
    start = (offset + seed) % 251
    return _PATTERN[start : start + size]


@dataclass
class _Direction:
    """One direction of one stream, as the model sees it."""

    seed: int
    backlog: int = 0  # bytes the app still wants to write
    written: int = 0  # bytes handed to send_data
    delivered: int = 0  # bytes that arrived in DataReceived
    consumed: int = 0  # bytes the receiving app acknowledged
    fin_sent: bool = False
    fin_received: bool = False


@dataclass
class _Stream:
    stream_id: int
    opener: str
    accepted: bool = False
    reset_seen: set[str] | None = None  # sides that know the stream is reset

    def __post_init__(self) -> None:
        self.reset_seen = set()
        # Sides whose app knows the stream: the opener at once, the acceptor at
        # StreamOpened.
        self.known = {self.opener}
        self.dirs = {
            "client": _Direction(seed=self.stream_id * 2),
            "server": _Direction(seed=self.stream_id * 2 + 1),
        }  # keyed by writer


class TunnelModel(RuleBasedStateMachine):
    """Random interleavings of opens, writes, reads, FIN, reset, pings and delivery.

    Proves: bytes arrive exact and in order; no side ever exceeds granted credit
    (the receiver would raise); session credit is conserved, so reset streams free
    theirs; and with both apps consuming, every pending byte is delivered.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pair = TunnelPair()
        self.sides = {"client": self.pair.client, "server": self.pair.server}
        self.streams: dict[int, _Stream] = {}
        self.pending_accept: dict[str, list[int]] = {"client": [], "server": []}

    # helpers
    def _other(self, name: str) -> str:
        return "server" if name == "client" else "client"

    def _live(self, side: str | None = None) -> list[_Stream]:
        """Streams ``side``'s app has not seen reset (both sides' if None)."""
        if side is None:
            return [s for s in self.streams.values() if not s.reset_seen]
        return [
            s for s in self.streams.values() if side in s.known and side not in (s.reset_seen or ())
        ]

    def _apply(self, receiver: str, events: list[Event]) -> None:
        writer = self._other(receiver)
        for event in events:
            if isinstance(event, StreamOpened):
                self.streams.setdefault(event.stream_id, _Stream(event.stream_id, writer))
                self.streams[event.stream_id].known.add(receiver)
                self.pending_accept[receiver].append(event.stream_id)
            elif isinstance(event, StreamAccepted):
                self.streams[event.stream_id].accepted = True
            elif isinstance(event, DataReceived):
                direction = self.streams[event.stream_id].dirs[writer]
                assert event.data == _expected(direction.seed, direction.delivered, len(event.data))
                direction.delivered += len(event.data)
                assert direction.delivered <= direction.written
            elif isinstance(event, StreamEnded):
                direction = self.streams[event.stream_id].dirs[writer]
                assert direction.fin_sent and direction.delivered == direction.written
                direction.fin_received = True
            elif isinstance(event, StreamResetEvent):
                # Only resets the apps asked for, or OPENs that crossed a GOAWAY:
                # the model never breaks a stream-level rule.
                assert event.error_code in (ErrorCode.CANCEL, ErrorCode.REFUSED_STREAM)
                stream = self.streams[event.stream_id]
                assert stream.reset_seen is not None
                stream.reset_seen.add(receiver)
                if event.stream_id in self.pending_accept[receiver]:
                    self.pending_accept[receiver].remove(event.stream_id)

    def _pump(self, name: str, stream: _Stream) -> None:
        """Write as much of the backlog as credit allows."""
        conn = self.sides[name]
        direction = stream.dirs[name]
        window = conn.send_window(stream.stream_id)
        size = min(window, direction.backlog)
        if size:
            conn.send_data(stream.stream_id, _expected(direction.seed, direction.written, size))
            direction.written += size
            direction.backlog -= size

    def _consume(self, name: str, stream: _Stream, limit: int) -> None:
        direction = stream.dirs[self._other(name)]
        size = min(limit, direction.delivered - direction.consumed)
        if size:
            self.sides[name].acknowledge_received_data(stream.stream_id, size)
            direction.consumed += size

    # rules
    @initialize(openers=st.lists(st.sampled_from(["client", "server"]), min_size=1, max_size=4))
    def start_streams(self, openers: list[str]) -> None:
        """Start with a few accepted streams so that data flows from the first step."""
        for opener in openers:
            sid = _open(self.pair, self.sides[opener])
            self.streams[sid] = _Stream(sid, opener, accepted=True)
            self.streams[sid].known.add(self._other(opener))

    @rule(side=st.sampled_from(["client", "server"]))
    def open_stream(self, side: str) -> None:
        """Either side opens a stream while the session accepts new ones."""
        conn = self.sides[side]
        if conn.accepting_streams and len(self.streams) < 12:
            sid = conn.open_stream(b"target")
            self.streams[sid] = _Stream(sid, side)

    @rule(side=st.sampled_from(["client", "server"]), accept=st.booleans())
    def answer_open(self, side: str, accept: bool) -> None:
        """The acceptor accepts (or refuses) the oldest pending OPEN."""
        if not self.pending_accept[side]:
            return
        sid = self.pending_accept[side].pop(0)
        if accept:
            self.sides[side].accept_stream(sid)
        else:
            self.sides[side].reset_stream(sid, ErrorCode.REFUSED_STREAM, "no")
            stream = self.streams[sid]
            assert stream.reset_seen is not None
            stream.reset_seen.add(side)

    @rule(
        side=st.sampled_from(["client", "server"]),
        pick=st.integers(min_value=0, max_value=20),
        size=st.one_of(
            st.integers(min_value=1, max_value=40_000),
            st.integers(min_value=300_000, max_value=1_500_000),
        ),
    )
    def write(self, side: str, pick: int, size: int) -> None:
        """The app wants to write ``size`` bytes; as much as credit allows goes now."""
        live = [s for s in self._live(side) if not s.dirs[side].fin_sent]
        if not live:
            return
        stream = live[pick % len(live)]
        stream.dirs[side].backlog += size
        self._pump(side, stream)

    @rule(
        side=st.sampled_from(["client", "server"]),
        pick=st.integers(min_value=0, max_value=20),
        limit=st.integers(min_value=1, max_value=2_000_000),
    )
    def read(self, side: str, pick: int, limit: int) -> None:
        """The app consumes (acknowledges) up to ``limit`` delivered bytes."""
        live = self._live(side)
        if live:
            self._consume(side, live[pick % len(live)], limit)

    @rule(side=st.sampled_from(["client", "server"]), pick=st.integers(min_value=0, max_value=20))
    def fin(self, side: str, pick: int) -> None:
        """A writer with an empty backlog half-closes."""
        conn = self.sides[side]
        ready = [
            s
            for s in self._live(side)
            if not s.dirs[side].fin_sent
            and not s.dirs[side].backlog
            and conn.stream_state(s.stream_id) in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
        ]
        if ready:
            stream = ready[pick % len(ready)]
            conn.send_fin(stream.stream_id)
            stream.dirs[side].fin_sent = True

    @rule(
        side=st.sampled_from(["client", "server"]),
        pick=st.integers(min_value=0, max_value=20),
        roll=st.integers(min_value=0, max_value=2),
    )
    def reset(self, side: str, pick: int, roll: int) -> None:
        """Either side aborts a live stream (one time in three, so streams live on)."""
        live = self._live(side)
        if live and roll == 0:
            stream = live[pick % len(live)]
            if stream.stream_id in self.pending_accept[side]:
                self.pending_accept[side].remove(stream.stream_id)
            self.sides[side].reset_stream(stream.stream_id, ErrorCode.CANCEL)
            assert stream.reset_seen is not None
            stream.reset_seen.add(side)

    @rule(side=st.sampled_from(["client", "server"]), count=st.integers(1, 64))
    def deliver(self, side: str, count: int) -> None:
        """Deliver some in-flight messages to one side (directions interleave); then
        writers retry their backlogs, as an adapter does when credit arrives."""
        self._apply(side, self.pair.deliver(self.sides[side], count))
        for name in self.sides:
            for stream in self._live(name):
                self._pump(name, stream)

    @rule(side=st.sampled_from(["client", "server"]))
    def ping(self, side: str) -> None:
        """Pings interleave with everything else."""
        self.sides[side].ping(b"pingpong")

    @precondition(lambda self: len(self.streams) >= 3)
    @rule(side=st.sampled_from(["client", "server"]))
    def goaway(self, side: str) -> None:
        """A graceful GOAWAY: no new streams, existing ones must still complete."""
        self.sides[side].goaway(ErrorCode.NO_ERROR)

    # invariants
    @invariant()
    def session_credit_is_conserved(self) -> None:
        """Per direction: sender credit + DATA in flight + WINDOW in flight == receiver
        credit; receiver credit + pending == the session window (session credit
        comes back on receipt), and per stream credit + pending + unacknowledged
        == that stream's (auto-tuned) window."""
        self.pair.collect()
        links = (
            (self.pair.client, self.pair.server, self.pair.to_server, self.pair.to_client),
            (self.pair.server, self.pair.client, self.pair.to_client, self.pair.to_server),
        )
        for sender, receiver, forward, backward in links:
            data_in_flight = sum(len(m) - 6 for m in forward if m[0] == FrameType.DATA)
            credit_in_flight = 0
            for message in backward:
                frame = Frame.parse(message)
                if frame.type is FrameType.WINDOW and frame.stream_id == 0:
                    credit_in_flight += frame.increment
            assert (
                sender.session_send_window + data_in_flight + credit_in_flight
                == receiver.session_receive_window
            )
            for sid in self.streams:
                # White-box: per-stream credit must balance like the session's.
                ours = sender._streams.get(sid)
                theirs = receiver._streams.get(sid)
                if ours is None or theirs is None or ours.machine.state is StreamState.CLOSED:
                    continue  # a closed sender ignores late WINDOWs: nothing to balance
                data_bytes = sum(
                    len(m) - 6
                    for m in forward
                    if m[0] == FrameType.DATA and int.from_bytes(m[2:6], "big") == sid
                )
                credit = sum(
                    Frame.parse(m).increment
                    for m in backward
                    if m[0] == FrameType.WINDOW and int.from_bytes(m[2:6], "big") == sid
                )
                assert (
                    ours.send_window + data_bytes + credit == theirs.recv_window.current_window_size
                )
                assert (
                    theirs.recv_window.current_window_size
                    + theirs.recv_window.pending
                    + theirs.unacked
                    == theirs.recv_window.max_window_size
                ) or theirs.machine.state not in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)
            assert (
                receiver.session_receive_window + receiver.session_credit_pending
                == INITIAL_SESSION_WINDOW
            )
            assert not sender.closed and not receiver.closed

    def teardown(self) -> None:
        """Drain: keep writing, delivering and consuming until quiet; then every
        live stream has delivered all its bytes and all session credit is back."""
        for name, pending in self.pending_accept.items():
            for sid in pending:
                self.sides[name].accept_stream(sid)
            pending.clear()
        for _ in range(2000):
            for name in self.sides:
                for stream in self._live(name):
                    self._pump(name, stream)
            self.pair.collect()
            if not self.pair.to_server and not self.pair.to_client:
                if not any(
                    s.dirs[n].backlog
                    or s.dirs[self._other(n)].delivered > s.dirs[self._other(n)].consumed
                    for n in self.sides
                    for s in self._live(n)
                ):
                    break
            self._apply("server", self.pair.deliver(self.pair.server))
            self._apply("client", self.pair.deliver(self.pair.client))
            for name, pending in self.pending_accept.items():
                for sid in pending:
                    self.sides[name].accept_stream(sid)
                pending.clear()
            for name in self.sides:
                for stream in self._live(name):
                    self._consume(name, stream, 1 << 30)
        else:
            raise AssertionError("deadlock: data still pending after 2000 rounds")
        for stream in self._live():
            assert stream.accepted
            for direction in stream.dirs.values():
                assert direction.backlog == 0
                assert direction.delivered == direction.written == direction.consumed
                assert direction.fin_received == direction.fin_sent
        for name, conn in self.sides.items():
            peer = self.sides[self._other(name)]
            held = sum(conn.unacknowledged(sid) for sid in self.streams)
            assert held == 0
            assert peer.session_send_window + conn.session_credit_pending == INITIAL_SESSION_WINDOW
            assert conn.session_credit_pending < INITIAL_SESSION_WINDOW // 2


TunnelModel.TestCase.settings = settings(max_examples=80, stateful_step_count=50)
test_connection_model_random_interleavings = TunnelModel.TestCase
