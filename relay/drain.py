"""A replica's stop without loss (rolling restart, SIGTERM).

Theory of operation. ``RelayServer.stop`` runs these steps in order:

1. **Readiness fails at once** (``state.accepting = False``: ``/readyz`` answers
   503 on both listeners) and the TLS listener closes, so the load balancer
   sends new connections (new arc-proxy sessions, the agents' new sessions)
   to the other replicas.
2. **arc-proxy sessions get GOAWAY**: arc-proxy opens its next streams on a
   new session (another replica); streams open here run on.
3. **Agents move make-before-break** (:func:`move_agents`): the relay writes
   :data:`RECONNECT_LINE` on every agent's control stream. The agent dials a
   new session (through the load balancer: another replica) while the old one
   keeps taking new streams; once the new one is up the agent sends GOAWAY on
   the old one. The relay waits for that GOAWAY (or the session's end), at
   most ``limits.agent_move_seconds``; an agent that has not moved by then
   (an older agent, or no other replica to go to) gets the relay's GOAWAY in
   step 4, which makes it redial as before. An agent whose control stream
   opens during this step (it had just connected) is asked at once.
4. Every remaining session (agents, peer links) gets GOAWAY; live streams
   finish, at most ``limits.drain_seconds``; then everything closes.

Why the agent, not the relay, ends the old session's intake: only the agent
knows when its new session is up, and a GOAWAY from either side stops new
streams both ways (tunnel/PROTOCOL.md), so the old session never refuses a
stream before the new one can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tunnel import StreamReset, TunnelClosed, TunnelSession, TunnelStream

log = logging.getLogger("relay")

# The one line the relay writes on an agent's control stream (the agent
# writes metadata lines the other way): "dial a new session, then GOAWAY this one".
RECONNECT_LINE = b'{"reconnect":"relay draining"}\n'


async def _moved(session: TunnelSession) -> None:
    """Return once the agent sent GOAWAY on ``session`` or it ended."""
    waits = {asyncio.ensure_future(session.wait_goaway_received()),
             asyncio.ensure_future(session.wait_closed())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


async def ask_to_reconnect(stream: TunnelStream, bound: float) -> None:
    """Write :data:`RECONNECT_LINE` on an agent's control stream (waiting for
    credit at most ``bound`` seconds; a stream already gone is skipped)."""
    with contextlib.suppress(StreamReset, TunnelClosed, TimeoutError):
        await asyncio.wait_for(stream.write(RECONNECT_LINE), bound)


async def move_agents(sessions: list[TunnelSession], controls: list[TunnelStream],
                      bound: float) -> tuple[int, int]:
    """Ask every agent to reconnect elsewhere and wait for each to move.

    Args:
        sessions: the live agent sessions of this replica.
        controls: their control streams (the agent opened them).
        bound: seconds to wait at most (0: ask nobody, wait for nothing).

    Returns:
        (agents that moved, agents that did not within ``bound``). Call
        GOAWAY on every session next.
    """
    waiting = [s for s in sessions if not (s.closed or s.draining)]
    if not waiting or bound <= 0:
        return 0, len(waiting)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    await asyncio.gather(*(ask_to_reconnect(stream, bound) for stream in controls))
    moves = [asyncio.ensure_future(_moved(s)) for s in waiting]
    _, pending = await asyncio.wait(moves, timeout=max(0.0, deadline - loop.time()))
    for move in pending:
        move.cancel()
    return len(waiting) - len(pending), len(pending)
