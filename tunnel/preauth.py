"""A bound on connections a listener holds before they are past their
set-up (TLS and the first request head): the relay's port and
kube-aad-proxy's use the same gate, so a slow-loris flood meets the same rule
on both. Standard library only; I/O-free: the listeners own the sockets.
"""

from __future__ import annotations

import logging

__all__ = ["PreAuthGate", "PreAuthSlot"]


class PreAuthSlot:
    """One admitted connection's place in the gate; ``release`` is idempotent."""

    __slots__ = ("_gate",)

    def __init__(self, gate: PreAuthGate) -> None:
        self._gate: PreAuthGate | None = gate

    def release(self) -> None:
        """The connection is past its first head (or gone): stop counting it."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.held -= 1


class PreAuthGate:
    """Bounds the connections held before their first request head is complete.

    Refusals are logged once per burst: the first refusal logs, the rest are
    counted (``refused``) until a connection is admitted again.

    Args:
        limit: Most connections held at once.
        log: Where the refusal line goes.
        name: Who refuses, first word of the line (``edge``, ``kube-aad-proxy``).
        key: The config key of ``limit``, named in the line.
    """

    def __init__(self, limit: int, log: logging.Logger, name: str, key: str) -> None:
        self.limit = limit
        self.held = 0
        self.refused = 0
        self._log = log
        self._name = name
        self._key = key
        self._in_burst = False

    def admit(self) -> PreAuthSlot | None:
        """A slot for a new connection, or None: close it now."""
        if self.held >= self.limit:
            self.refused += 1
            if not self._in_burst:
                self._in_burst = True
                self._log.warning("%s refusing new connections: %d held before their first request "
                                  "head (%s=%d)", self._name, self.held, self._key, self.limit)
            return None
        self._in_burst = False
        self.held += 1
        return PreAuthSlot(self)
