"""Rate-limited refusal log lines.

A client can send hundreds of forbidden OPENs per second; one log line each
would make the log the bottleneck (and bury everything else). ``RefusalLog``
writes the first refusal of a (principal, cluster, reason) key, then at most
one line per ``interval`` for that key, carrying how many were suppressed in
between. Keys are bounded (``max_keys``, oldest window first out): a flood of
distinct keys costs at most one line each, never unbounded memory.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

# Distinct keys remembered at once; past it the oldest window is forgotten
# (its suppressed count is then logged as part of the next line for it).
MAX_KEYS = 4096


class RefusalLog:
    """One log line per key per ``interval`` seconds (see module docstring)."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, *, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        # key -> (window start, refusals suppressed since the last line)
        self._windows: OrderedDict[tuple[str, str, str], tuple[float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def refused(self, what: str, principal: str, cluster: str, reason: str) -> bool:
        """Record one refusal; log it unless its key was logged within ``interval``.

        Args:
            what: the event, e.g. ``"stream forbidden"``.
            principal: who was refused (untrusted text: repr'd in the line).
            cluster: the cluster id asked for.
            reason: a short fixed reason (e.g. ``"no role"``).

        Returns:
            True when a line was written.
        """
        key = (principal, cluster, reason)
        now = self.clock()
        window = self._windows.get(key)
        if window is not None and now - window[0] < self.interval:
            self._windows[key] = (window[0], window[1] + 1)
            return False
        suppressed = window[1] if window is not None else 0
        self._windows[key] = (now, 0)
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        self.logger.info("%s principal=%r cluster=%r reason=%r suppressed=%d", what, principal,
                         cluster, reason, suppressed)
        return True
