"""Handshake admission through a real relay, and what agents do with its answer.

A burst of agent connects beyond the relay's admission gets ``503`` with
``Retry-After`` at once while ``/readyz`` keeps answering; an agent refused
that way redials after the hinted delay (bounded, jittered); a peer that goes
away mid-upgrade costs one INFO line and no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.admission import MIN_RATE_ESTIMATE, HandshakeAdmission
from tests.support.relay import RelayEnv, running_env
from tests.support.waits import WAIT
from tunnel import RETRY_AFTER_CAP, retry_after_delay, retry_after_seconds

RETRY_AFTER = 3


@pytest.fixture
async def relay_env(tmp_path: Path) -> AsyncIterator[RelayEnv]:
    """A relay admitting 5 handshakes per second (bucket of 5), no waiting."""
    async with running_env(tmp_path, handshakes_per_second=5.0,
                           retry_after_seconds=RETRY_AFTER, max_queue_seconds=0.0, max_loop_lag_seconds=0.0) as env:
        yield env


async def _get(env: RelayEnv, path: str, token: str = "x") -> tuple[int, str | None, str]:
    headers = {"Authorization": f"Bearer {token}", "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    async with env.http.get(env.relay.url + path, headers=headers) as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.text()


async def _metric(env: RelayEnv, line_prefix: str) -> float:
    async with env.http.get(env.relay.health_url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_relay_answers_burst_beyond_admission_with_503_retry_after_while_readyz_answers(
        relay_env: RelayEnv) -> None:
    """40 agent handshakes at once: the few admitted are judged (401, a bad
    assertion), every other one is answered 503 + Retry-After without being
    judged; /readyz and /metrics answer throughout."""
    burst = [asyncio.ensure_future(_get(relay_env, "/agent/v1/connect")) for _ in range(40)]
    ready = [asyncio.ensure_future(relay_env.http.get(relay_env.relay.url + "/readyz")) for _ in range(5)]
    results = await asyncio.gather(*burst)
    for fut in ready:
        resp = await fut
        assert resp.status == 200
        resp.release()
    busy = [r for r in results if r[0] == 503]
    judged = [r for r in results if r[0] == 401]
    assert len(busy) + len(judged) == len(results)
    assert judged, "the first handshakes are admitted"
    assert len(busy) >= 30, f"only {len(busy)} of 40 refused"
    # The hint is at least the configured one and grows with the refusals per second.
    ceiling = max(RETRY_AFTER, math.ceil(len(busy) / 5))
    assert all(r[1] is not None and RETRY_AFTER <= int(r[1]) <= ceiling and '"Busy"' in r[2]
               for r in busy)
    refused = await _metric(relay_env, 'arc_relay_admission_refused_total{endpoint="agent"}')
    assert refused == len(busy)
    # Refused handshakes never reached authentication.
    failures = await _metric(relay_env, 'arc_relay_auth_failures_total{endpoint="agent",reason="malformed assertion"}')
    assert failures == len(judged)
    # The client endpoint shares the budget.
    assert relay_env.state.admission.refused >= len(busy)


async def test_agent_redials_after_the_hinted_delay(tmp_path: Path) -> None:
    """An agent refused with 503 + Retry-After: 1 waits within [1, 2] s
    (hint plus jitter) and then connects."""
    async with running_env(tmp_path, handshakes_per_second=0.3, retry_after_seconds=1,
                           max_retry_after_seconds=1, max_queue_seconds=0.0, max_loop_lag_seconds=0.0) as env:
        keys = await env.register("rg1", "alpha")
        loop = asyncio.get_running_loop()
        assert (await _get(env, "/agent/v1/connect"))[0] == 401  # takes the one token
        started = loop.time()
        connector = await env.start_agent("rg1/alpha", keys, ("127.0.0.1", 9))
        assert await connector.wait_connected(WAIT)
        elapsed = loop.time() - started
        assert connector.busy_refusals >= 1
        assert 1.0 <= connector.last_delay <= 2.0
        # It honoured the hint: no connect before a full hinted delay had passed.
        assert elapsed >= 1.0
        refused = await _metric(env, 'arc_relay_admission_refused_total{endpoint="agent"}')
        assert refused == connector.busy_refusals


def test_retry_after_hint_is_parsed_capped_and_jittered() -> None:
    """Retry-After delta-seconds are honoured up to a cap; the delay is the
    hint plus up to one second (the relay staggers the hints); junk is ignored."""
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"Retry-After": "86400"}) == RETRY_AFTER_CAP
    for junk in ("soon", "-1", "nan", "Wed, 21 Oct 2015 07:28:00 GMT"):
        assert retry_after_seconds({"Retry-After": junk}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None
    delays = [retry_after_delay(2.0) for _ in range(2000)]
    assert all(2.0 <= d <= 3.0 for d in delays)
    assert min(delays) < 2.2 and max(delays) > 2.8
    assert all(0.5 <= retry_after_delay(0.5) <= 1.0 for _ in range(200))


def test_admission_bounds_concurrency_and_rate() -> None:
    """In-flight handshakes never exceed the cap; the token bucket holds at
    most one second's worth and refills at the configured rate."""
    now = [0.0]
    admission = HandshakeAdmission(max_concurrent=3, per_second=10.0, retry_after=2,
                                   clock=lambda: now[0])
    assert [admission.try_admit() for _ in range(4)] == [True, True, True, False]
    admission.done()
    assert admission.try_admit() and admission.in_flight == 3
    for _ in range(3):
        admission.done()

    def admitted(attempts: int) -> int:
        count = 0
        for _ in range(attempts):
            if admission.try_admit():
                admission.done()
                count += 1
        return count

    # 4 tokens used of 10; 6 left, then empty.
    assert admitted(10) == 6
    now[0] += 0.5  # five tokens refilled
    assert admitted(10) == 5
    now[0] += 3600.0  # idle for an hour: still only one second's worth
    assert admitted(30) == 10
    assert admission.refused == 1 + 4 + 5 + 20


def test_admission_gives_each_refused_peer_its_own_slot() -> None:
    """N refusals at R admitted per second: the i-th refused peer is hinted
    about i / R seconds (so refused peers return at about R per second, in
    order), never below the configured least nor above the configured most;
    the hint falls back once the queue of slots has passed."""
    now = [0.0]
    admission = HandshakeAdmission(max_concurrent=1000, per_second=10.0, retry_after=2,
                                   clock=lambda: now[0], max_retry_after=30)
    assert admission.retry_after_hint() == 2
    for _ in range(10):
        assert admission.try_admit()
    hints = []
    for _ in range(100):
        assert not admission.try_admit()
        hints.append(admission.retry_after_hint())
    assert hints[:20] == [2] * 20  # slots 0.1 .. 2.0 s ahead: the least
    assert hints[-1] == 10  # 100 refusals / 10 per second
    assert hints == sorted(hints)
    for _ in range(500):
        admission.try_admit()
    assert admission.retry_after_hint() == 30  # capped
    now[0] += 1.5
    assert admission.retry_after_hint() == 29  # the last slot, 1.5 s nearer
    now[0] += 60.0
    admission.in_flight = 1000  # refuse one more, after the queue has passed
    assert not admission.try_admit()
    assert admission.retry_after_hint() == 2


def test_admission_refuses_while_the_loop_lags_and_learns_its_rate() -> None:
    """With no fixed rate, handshakes are admitted while the measured loop lag
    is at most the bound and refused above it; slots then follow the rate at
    which handshakes were completed in a second at the limit."""
    now, lag = [0.0], [0.0]
    admission = HandshakeAdmission(max_concurrent=1000, per_second=0.0, retry_after=1,
                                   clock=lambda: now[0], max_retry_after=60,
                                   max_loop_lag=0.25, loop_lag=lambda: lag[0])
    for _ in range(50):
        assert admission.try_admit()
        admission.done()
    lag[0] = 0.3
    assert not admission.try_admit()
    assert admission.lag_holds == 1
    now[0] = 1.0  # a second at the limit: 50 completed
    lag[0] = 0.0
    assert admission.try_admit()
    admission.done()
    assert admission.rate_estimate() == 50.0
    lag[0] = 1.0
    for _ in range(100):
        assert not admission.try_admit()
    assert admission.retry_after_hint() == 2  # 100 slots at 50 per second
    now[0] = 2.0  # that second, at the limit, completed one: the floor
    assert admission.rate_estimate() == MIN_RATE_ESTIMATE
    lag[0] = 0.0
    for _ in range(30):
        assert admission.try_admit()
        admission.done()
    now[0] = 3.0  # a second with no refusal measures demand, not capacity: kept
    assert admission.rate_estimate() == MIN_RATE_ESTIMATE


async def test_loop_lag_measures_a_blocked_loop() -> None:
    """The lag timer reads at least the length of a blocking call made on the
    loop, from the moment the loop is blocked; the tick after the late one
    measures afresh (a lag is not carried forward)."""
    from relay.admission import LoopLag

    ticks: asyncio.Queue[float] = asyncio.Queue()
    monitor = LoopLag(interval=0.01, on_tick=lambda: ticks.put_nowait(monitor.last))
    monitor.start()
    try:
        await asyncio.wait_for(ticks.get(), WAIT)  # ticking; the next is due in 0.01 s
        time.sleep(0.2)  # block the loop
        assert monitor.current() >= 0.19  # overdue now, before the timer could run
        late = await asyncio.wait_for(ticks.get(), WAIT)
        assert late >= 0.19
        after = await asyncio.wait_for(ticks.get(), WAIT)
        assert after < late
    finally:
        monitor.stop()


async def test_relay_logs_aborted_upgrade_as_one_info_line(relay_env: RelayEnv,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A client that sends its upgrade and leaves before the relay answers: one
    INFO line, no ERROR, no traceback (aiohttp would log the handler's
    ConnectionResetError with a traceback)."""
    token = relay_env.token("demo")
    assert relay_env.relay.ca_pem is not None
    ctx = ssl.create_default_context(cadata=relay_env.relay.ca_pem.decode())
    port = relay_env.relay.port

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        return ctx.wrap_socket(raw, server_hostname="localhost")

    tls = await asyncio.to_thread(connect)
    request = ("GET /client/v1/connect HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
               "Sec-WebSocket-Protocol: arc-tunnel.v1\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    caplog.set_level(logging.DEBUG)
    # Without yielding to the event loop: the relay finds the request and the
    # close together, and its first token validation (a JWKS fetch) lets it
    # notice the close before it answers the upgrade.
    tls.sendall(request)
    tls.close()
    async with asyncio.timeout(WAIT):
        while await _metric(relay_env, 'arc_relay_upgrades_aborted_total{endpoint="client"}') < 1:
            await asyncio.sleep(0.02)
    lines = [r for r in caplog.records if r.name.startswith(("relay", "aiohttp"))]
    aborted = [r for r in lines if "upgrade aborted" in r.getMessage()]
    assert len(aborted) == 1 and aborted[0].levelno == logging.INFO
    assert "client upgrade aborted" in aborted[0].getMessage()
    assert not [r for r in lines if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in lines if r.exc_info or r.levelno >= logging.ERROR]
    assert not [r for r in lines if "client connected" in r.getMessage()]


async def test_arc_proxy_session_waits_out_a_busy_relay(tmp_path: Path) -> None:
    """arc-proxy's session keeper, refused 503 + Retry-After: 1 at start, waits
    the hinted delay (jittered within [1, 2] s) and then connects."""
    from client.auth import TokenSource
    from client.config import AuthConfig, ClientConfig
    from client.relay_client import RelaySessionKeeper

    async with running_env(tmp_path, handshakes_per_second=0.3, retry_after_seconds=1,
                           max_retry_after_seconds=1, max_queue_seconds=0.0, max_loop_lag_seconds=0.0) as env:
        token_file = tmp_path / "token"
        token_file.write_text(env.token("demo"))
        auth = AuthConfig(token_command=f"cat {token_file}")
        config = ClientConfig(relay_url=env.relay.url, relay_ca_file=str(env.relay.ca_file), auth=auth)
        keeper = RelaySessionKeeper(config, TokenSource(auth), name="busy-test")
        loop = asyncio.get_running_loop()
        assert (await _get(env, "/client/v1/connect"))[0] == 401  # takes the one token
        started = loop.time()
        try:
            session = await asyncio.wait_for(keeper.start(), WAIT)
            assert not session.closed
            assert loop.time() - started >= 1.0
            refused = await _metric(env, 'arc_relay_admission_refused_total{endpoint="client"}')
            assert refused >= 1
        finally:
            await keeper.close()


def test_arc_proxy_parses_retry_after_and_jitters() -> None:
    """The client's Retry-After handling matches the agent's: capped, junk
    ignored, delays within [hint, 2 * hint] (the same tunnel.redial helpers)."""
    from client.relay_client import retry_after_delay as client_retry_delay
    from client.relay_client import retry_after_seconds as client_retry_after

    assert client_retry_after({"Retry-After": "1"}) == 1.0
    assert client_retry_after({"Retry-After": "99999"}) == RETRY_AFTER_CAP
    assert client_retry_after({"Retry-After": "later"}) is None
    assert client_retry_after({"Retry-After": "nan"}) is None
    assert client_retry_after({}) is None
    assert all(1.0 <= client_retry_delay(1.0) <= 2.0 for _ in range(500))


async def test_agent_storm_is_paced_by_admission_without_abandoned_sessions(tmp_path: Path) -> None:
    """30 agents dial at once into a relay admitting 10 handshakes per second:
    every agent connects, the relay sets up exactly one session per agent (none
    abandoned by an agent that gave up), refusals were answered 503 +
    Retry-After, and /readyz answered 200 throughout."""
    agents = 30
    async with running_env(tmp_path, handshakes_per_second=10.0, retry_after_seconds=1,
                           max_queue_seconds=0.0, max_loop_lag_seconds=0.0) as env:
        keys = [await env.register("storm", f"c{i}") for i in range(agents)]
        stop = asyncio.Event()

        async def probe_readyz() -> list[int]:
            statuses = []
            while not stop.is_set():
                async with env.http.get(env.relay.url + "/readyz") as resp:
                    statuses.append(resp.status)
                await asyncio.sleep(0.05)
            return statuses

        prober = asyncio.ensure_future(probe_readyz())
        connectors = [await env.start_agent(f"storm/c{i}", k, ("127.0.0.1", 9)) for i, k in enumerate(keys)]
        connected = await asyncio.gather(*(c.wait_connected(WAIT) for c in connectors))
        stop.set()
        statuses = await prober
        assert all(connected)
        assert statuses and set(statuses) == {200}
        accepted = await _metric(env, 'arc_relay_sessions_accepted_total{kind="agent"}')
        assert accepted == agents, "a session was set up that its agent abandoned"
        refused = await _metric(env, 'arc_relay_admission_refused_total{endpoint="agent"}')
        assert refused >= 1 and refused == sum(c.busy_refusals for c in connectors)
        assert all(c.sessions_started == 1 for c in connectors)


async def test_agent_storm_waits_in_the_admission_queue_instead_of_503(tmp_path: Path) -> None:
    """30 agents dial while a relay running 2 handshakes at a time has both
    slots taken: they wait in the queue (the default) instead of a 503; once
    the slots are freed every agent connects on its first dial, none refused."""
    agents = 30
    async with running_env(tmp_path, max_concurrent_handshakes=2) as env:
        admission = env.state.admission
        keys = [await env.register("queue", f"c{i}") for i in range(agents)]
        assert await admission.admit() and await admission.admit()  # both slots taken
        # (these two may have waited a turn themselves, on a machine busy enough
        # for the loop-lag bound to hold them: count from here)
        queued_before = admission.queued_total
        connectors = [await env.start_agent(f"queue/c{i}", k, ("127.0.0.1", 9)) for i, k in enumerate(keys)]
        async with asyncio.timeout(WAIT):
            while admission.queued < agents:
                await asyncio.sleep(0.01)
        admission.done()
        admission.done()
        assert all(await asyncio.gather(*(c.wait_connected(WAIT) for c in connectors)))
        assert all(c.sessions_started == 1 and c.busy_refusals == 0 for c in connectors)
        assert admission.queued_total - queued_before == agents
        assert admission.in_flight == 0 and admission.queued == 0
        refused = await _metric(env, 'arc_relay_admission_refused_total{endpoint="agent"}')
        assert refused == 0
        assert await _metric(env, "arc_relay_admission_queued_total") == agents + queued_before
        assert await _metric(env, "arc_relay_admission_waiting") == 0


async def test_admission_queue_is_bounded_in_length_and_time() -> None:
    """Beyond ``max_queued`` waiters a handshake is refused at once; a waiter
    that gets no turn within ``max_queue_seconds`` is refused; a turn freed by
    ``done`` goes to the oldest waiter; a cancelled waiter leaves no slot taken."""
    admission = HandshakeAdmission(max_concurrent=1, per_second=0.0, retry_after=1,
                                   max_queue_seconds=0.2, max_queued=2)
    assert await admission.admit()
    first = asyncio.ensure_future(admission.admit())
    second = asyncio.ensure_future(admission.admit())
    await asyncio.sleep(0)
    assert admission.queued == 2
    assert not await admission.admit()  # queue full: refused at once
    admission.done()  # the slot goes to the oldest waiter
    assert await first
    assert not await second  # no turn within 0.2 s
    assert admission.refused == 2 and admission.in_flight == 1
    admission.done()
    assert await admission.admit()
    waiter = asyncio.ensure_future(admission.admit())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    admission.done()
    assert admission.in_flight == 0 and admission.queued == 0


async def test_admission_queue_hands_refilled_tokens_to_waiters() -> None:
    """At a fixed rate with nothing completing, a waiter still gets its turn
    once the bucket refills (the timer hands turns over, not only ``done``)."""
    admission = HandshakeAdmission(max_concurrent=100, per_second=5.0, retry_after=1,
                                   max_queue_seconds=WAIT, max_queued=10)
    admission.start()
    try:
        for _ in range(5):  # the bucket: one second's worth
            assert await admission.admit()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await admission.admit()  # waits for a refill (~0.2 s), no done() called
        assert loop.time() - started >= 0.1
        assert admission.queued_total == 1 and admission.refused == 0
    finally:
        admission.stop()


async def test_admission_refuses_at_once_who_would_time_out_in_the_queue() -> None:
    """At a measured rate of R handshakes per second, the queue takes only as
    many waiters as R drains within ``max_queue_seconds``; the next one is
    refused at once (not after waiting in vain), and its Retry-After slot
    lies behind the waiters, whose turns come first."""
    now = [0.0]
    admission = HandshakeAdmission(max_concurrent=1, per_second=0.0, retry_after=1,
                                   clock=lambda: now[0], max_retry_after=60,
                                   max_queue_seconds=2.0, max_queued=1000)
    assert await admission.admit()
    waiters = [asyncio.ensure_future(admission.admit()) for _ in range(5)]
    await asyncio.sleep(0)
    for _ in range(20):  # a second at the limit (waiters queued), 20 completed
        admission.in_flight += 1
        admission.done()
    now[0] = 1.0
    assert admission.rate_estimate() == 20.0
    # 2 s at 20/s: 40 may wait; 5 already do.
    more = [asyncio.ensure_future(admission.admit()) for _ in range(40)]
    await asyncio.sleep(0)
    assert admission.queued == 40 and admission.refused == 5
    # The refused peers are hinted behind the 40 waiters: 40/20 = 2 s, then 1/20 s each.
    assert admission.retry_after_hint() == 3
    for waiter in [*waiters, *more]:
        waiter.cancel()
    await asyncio.gather(*waiters, *more, return_exceptions=True)
