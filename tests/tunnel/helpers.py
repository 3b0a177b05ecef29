"""In-memory links between two sans-I/O tunnel cores (no sockets, no asyncio)."""

from __future__ import annotations

from collections import deque

from tunnel.connection import Connection
from tunnel.events import Event
from tunnel.limits import Limits

__all__ = ["TunnelPair"]


class TunnelPair:
    """Two :class:`Connection` objects linked by two ordered in-memory "websockets".

    ``client`` dialled (odd stream ids), ``server`` accepted (even ids), as the
    agent and the relay would. Messages sit in per-direction queues until
    delivered, so a test controls interleaving: each direction stays in order
    (a websocket is ordered) but the two directions interleave freely.

    Args:
        limits: Limits for both sides (or use ``client_limits``/``server_limits``).
        client_limits: Limits of the client side only.
        server_limits: Limits of the server side only.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        client_limits: Limits | None = None,
        server_limits: Limits | None = None,
    ) -> None:
        self.client = Connection(is_client=True, limits=client_limits or limits)
        self.server = Connection(is_client=False, limits=server_limits or limits)
        # Messages in flight: to_server carries what the client sent.
        self.to_server: deque[bytes] = deque()
        self.to_client: deque[bytes] = deque()

    def peer(self, conn: Connection) -> Connection:
        """Return the other side of ``conn``."""
        return self.server if conn is self.client else self.client

    def collect(self) -> None:
        """Move whatever both sides queued into the in-flight queues."""
        self.to_server.extend(self.client.data_to_send())
        self.to_client.extend(self.server.data_to_send())

    def deliver(self, conn: Connection, max_messages: int | None = None) -> list[Event]:
        """Deliver in-flight messages addressed to ``conn`` (oldest first).

        Args:
            conn: The receiving side.
            max_messages: Deliver at most this many (None: all currently queued).

        Returns:
            The events ``conn`` produced, in order.
        """
        self.collect()
        queue = self.to_server if conn is self.server else self.to_client
        events: list[Event] = []
        count = len(queue) if max_messages is None else min(max_messages, len(queue))
        for _ in range(count):
            events.extend(conn.receive(queue.popleft()))
        return events

    def exchange(self, max_rounds: int = 1000) -> tuple[list[Event], list[Event]]:
        """Deliver both ways until nothing is in flight.

        Returns:
            (client events, server events), each in order.

        Raises:
            RuntimeError: still busy after ``max_rounds`` rounds (a livelock).
        """
        client_events: list[Event] = []
        server_events: list[Event] = []
        for _ in range(max_rounds):
            self.collect()
            if not self.to_server and not self.to_client:
                return client_events, server_events
            server_events.extend(self.deliver(self.server))
            client_events.extend(self.deliver(self.client))
        raise RuntimeError("TunnelPair.exchange did not settle")
