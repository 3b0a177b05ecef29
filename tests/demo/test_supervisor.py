"""The demo's supervisor over real child processes: a death is reported once,
in one line; restarts back off (doubling, capped, reset after a stable run);
a failed restart is retried later; ``restart=False`` leaves the child down.

The clock is the test's own, so the backoff is checked without waiting for
it; every child is a real process whose end is awaited, never slept for."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmdline.errors import CliError
from demo import Child, RestartBackoff, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ProcessEnv:
    """A :class:`demo.supervisor.Supervised` with real children; ``fail_next``
    makes the next restarts raise as a child that does not come up would."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}
        self.restarts: list[str] = []
        self.fail_next = 0

    def start(self, name: str, argv: list[str] = SLEEPER) -> Child:
        child = Child(name, argv, self.log_dir).start()
        self.children[name] = child
        return child

    def restart(self, name: str) -> str:
        self.restarts.append(name)
        if self.fail_next:
            self.fail_next -= 1
            raise CliError(f"timed out after 1 s waiting for {name} to be ready")
        self.start(name)
        return ""

    def kill(self, name: str) -> int:
        """SIGKILL the child and wait until it is gone; returns its pid."""
        child = self.children[name]
        assert child.proc is not None
        child.proc.kill()
        child.proc.wait(10)
        return child.pid

    def stop(self) -> None:
        for child in self.children.values():
            child.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ProcessEnv]:
    e = ProcessEnv(tmp_path)
    yield e
    e.stop()


def test_supervisor_reports_a_killed_child_once_and_restarts_it_after_the_backoff(env: ProcessEnv) -> None:
    """kill -9: one line naming the child, pid, signal and log; no restart before
    the delay, one after it; the new child runs; nothing more is reported."""
    lines: list[str] = []
    clock = Clock()
    env.start("relay")
    sup = Supervisor(env, lines.append, clock=clock)
    sup.poll()
    assert lines == []
    pid = env.kill("relay")
    sup.poll()
    sup.poll()
    assert lines == [f"demo: relay (pid {pid}) killed by SIGKILL; restarting in 0.5 s "
                     f"(log: {env.log_dir / 'relay.log'})"]
    assert env.restarts == []
    clock.now += 0.5
    sup.poll()
    assert env.restarts == ["relay"]
    new = env.children["relay"]
    assert new.pid != pid and new.running()
    assert lines[1:] == [f"demo: relay restarted (pid {new.pid})"]
    sup.poll()
    assert len(lines) == 2


def test_supervisor_reports_the_log_tail_of_a_child_that_exited_with_an_error(env: ProcessEnv) -> None:
    """A child that exits non-zero is reported with its code and last log line (escaped, one line)."""
    lines: list[str] = []
    crash = [sys.executable, "-c", "import sys; print('listen failed: \\x1b[31mport in use'); sys.exit(3)"]
    child = env.start("idp", crash)
    assert child.proc is not None
    child.proc.wait(30)
    Supervisor(env, lines.append, clock=Clock()).poll()
    assert len(lines) == 1
    assert lines[0].startswith(f"demo: idp (pid {child.pid}) exited with code 3 (listen failed: ")
    assert "\x1b" not in lines[0] and "\n" not in lines[0]


def test_supervisor_backs_off_doubling_to_the_cap_and_resets_after_a_stable_run(env: ProcessEnv) -> None:
    """Deaths right after each restart double the delay up to the cap; a child
    that ran ``stable_after`` seconds starts over at the initial delay."""
    lines: list[str] = []
    clock = Clock()
    env.start("agent")
    sup = Supervisor(env, lines.append, clock=clock,
                     backoff=lambda: RestartBackoff(initial=1.0, cap=4.0, stable_after=50.0))
    delays = []
    for _ in range(4):
        env.kill("agent")
        sup.poll()
        delays.append(lines[-1].split("restarting in ")[1].split(" s")[0])
        clock.now += float(delays[-1])
        sup.poll()
        assert env.children["agent"].running()
    assert delays == ["1.0", "2.0", "4.0", "4.0"]
    clock.now += 50.0
    env.kill("agent")
    sup.poll()
    assert "restarting in 1.0 s" in lines[-1]


def test_supervisor_retries_a_restart_that_failed_with_a_longer_delay(env: ProcessEnv) -> None:
    """A restart that raises CliError is one line with the cause and the next
    delay, and is tried again once that delay has passed."""
    lines: list[str] = []
    clock = Clock()
    env.start("relay")
    sup = Supervisor(env, lines.append, clock=clock)
    env.kill("relay")
    env.fail_next = 1
    sup.poll()
    clock.now += 0.5
    sup.poll()
    assert lines[-1] == ("demo: relay did not come back: timed out after 1 s waiting for relay to be "
                         "ready; next try in 1.0 s")
    clock.now += 0.9
    sup.poll()
    assert env.restarts == ["relay"]
    clock.now += 0.1
    sup.poll()
    assert env.restarts == ["relay", "relay"] and env.children["relay"].running()
    assert lines[-1].startswith("demo: relay restarted (pid ")


def test_supervisor_without_restart_leaves_the_child_down(env: ProcessEnv) -> None:
    """``restart=False``: the death is reported once with --no-restart named, and
    the child is never started again however much time passes."""
    lines: list[str] = []
    clock = Clock()
    env.start("relay")
    sup = Supervisor(env, lines.append, restart=False, clock=clock)
    pid = env.kill("relay")
    for _ in range(3):
        sup.poll()
        clock.now += 3600
    assert lines == [f"demo: relay (pid {pid}) killed by SIGKILL; left down (--no-restart); "
                     f"its log: {env.log_dir / 'relay.log'}"]
    assert env.restarts == []
