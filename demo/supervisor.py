"""Supervision of the demo's children: a child that ends is reported in one
line and started again after a backoff, or left down on request
(``arcctl demo --no-restart``).

Nothing is deleted when a child dies: its log, its state and the client
config stay until the demo itself stops, so a user can watch a relay outage
(``Offline``, reconnects, arc-proxy's relay-down error) and look at the logs.

The supervisor is polled from the demo's foreground loop, which also watches
for Ctrl-C: a restart runs there, waiting for the child's readiness with the
demo's checkpoint, so Ctrl-C during a restart still stops the demo at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cmdline.errors import CliError

__all__ = [
    "RESTART_CAP",
    "RESTART_INITIAL",
    "STABLE_AFTER",
    "RestartBackoff",
    "Supervised",
    "Supervisor",
]

# First restart delay (seconds): short, so that a demo user who killed the
# relay to watch the reconnects sees it back at once.
RESTART_INITIAL = 0.5
# Delays double up to this (seconds): a child that dies at start-up (its port
# taken, a broken config) is tried twice a minute, not in a tight loop that
# fills its log and the terminal.
RESTART_CAP = 30.0
# A child that has run this long (seconds) since its restart counts as healthy
# again: its next death starts over at RESTART_INITIAL.
STABLE_AFTER = 60.0


class SupervisedChild(Protocol):
    """What the supervisor needs of one child (``demo.processes.Child``)."""

    @property
    def pid(self) -> int: ...

    @property
    def log_path(self) -> Path: ...

    def exit_code(self) -> int | None: ...

    def describe_exit(self) -> str: ...

    def log_tail(self, lines: int = 1) -> str: ...


class Supervised(Protocol):
    """What the supervisor needs of the environment (``demo.DemoEnvironment``)."""

    @property
    def children(self) -> Mapping[str, SupervisedChild]: ...

    def restart(self, name: str) -> str: ...


@dataclass
class RestartBackoff:
    """Exponential restart delays of one child: ``initial`` doubling up to
    ``cap``, back to ``initial`` once the child stayed up ``stable_after``
    seconds. No jitter: one supervisor restarts one child, there is no herd."""

    initial: float = RESTART_INITIAL
    cap: float = RESTART_CAP
    stable_after: float = STABLE_AFTER
    attempt: int = 0
    started_at: float = 0.0

    def next_delay(self, now: float) -> float:
        """The delay before the next restart of a child that ended at ``now``."""
        if self.started_at and now - self.started_at >= self.stable_after:
            self.attempt = 0
        delay = min(self.cap, self.initial * float(2 ** min(self.attempt, 30)))
        self.attempt += 1
        return delay

    def started(self, now: float) -> None:
        """Record a (re)start at ``now`` (the stable period counts from here)."""
        self.started_at = now


@dataclass
class _Down:
    """A child that ended and is waiting for its restart (or left down)."""

    restart_at: float | None  # None: left down (--no-restart)
    backoff: RestartBackoff = field(default_factory=RestartBackoff)


class Supervisor:
    """Watches the children of a :class:`Supervised` environment.

    Args:
        env: the environment whose ``children`` are watched and restarted.
        say: prints one line (the demo's stdout).
        restart: False = a child that ends is reported and left down.
        clock: monotonic seconds (tests of the backoff pass their own).
        backoff: makes each child's :class:`RestartBackoff`.

    Call :meth:`poll` from the foreground loop; it returns quickly unless a
    restart is due, which waits for the child's readiness.
    """

    def __init__(self, env: Supervised, say: Callable[[str], None], *, restart: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 backoff: Callable[[], RestartBackoff] = RestartBackoff) -> None:
        self.env = env
        self.say = say
        self.restart = restart
        self.clock = clock
        self.make_backoff = backoff
        self.backoffs: dict[str, RestartBackoff] = {}
        # Children that ended: each is reported once, then waits here for its restart.
        self.down: dict[str, _Down] = {}

    def poll(self) -> None:
        """Report children that ended since the last call; restart those due."""
        now = self.clock()
        for name, child in list(self.env.children.items()):
            if name in self.down or child.exit_code() is None:
                continue
            self._report_death(name, child, now)
        for name, down in list(self.down.items()):
            if down.restart_at is not None and now >= down.restart_at:
                self._restart(name, down)

    def _report_death(self, name: str, child: SupervisedChild, now: float) -> None:
        how = child.describe_exit()
        # The log's last line says why a crashed child exited (a killed one's says nothing).
        tail = child.log_tail() if not how.startswith("killed") else ""
        detail = f" ({tail})" if tail else ""
        backoff = self.backoffs.setdefault(name, self.make_backoff())
        if not self.restart:
            self.down[name] = _Down(None, backoff)
            self.say(f"demo: {name} (pid {child.pid}) {how}{detail}; left down (--no-restart); "
                     f"its log: {child.log_path}")
            return
        delay = backoff.next_delay(now)
        self.down[name] = _Down(now + delay, backoff)
        self.say(f"demo: {name} (pid {child.pid}) {how}{detail}; restarting in {delay:.1f} s "
                 f"(log: {child.log_path})")

    def _restart(self, name: str, down: _Down) -> None:
        try:
            note = self.env.restart(name)
        except CliError as err:
            now = self.clock()
            delay = down.backoff.next_delay(now)
            down.restart_at = now + delay
            self.say(f"demo: {name} did not come back: {err}; next try in {delay:.1f} s")
            return
        del self.down[name]
        down.backoff.started(self.clock())
        self.say(f"demo: {name} restarted (pid {self.env.children[name].pid}){note}")
