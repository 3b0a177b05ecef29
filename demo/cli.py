"""``arcctl demo`` (run as ``python -m demo``): the embedded default on loopback.

Starts the demo's processes (:class:`demo.environment.DemoEnvironment`),
prints the next two commands and stays in the foreground, supervising them:
a child that dies is reported in one line and restarted, or left down with
``--no-restart``. Ctrl-C/SIGTERM, at any point, stops every child and removes
what the demo created; nothing is removed before that.

``arcctl demo`` starts this module as a process of its own (``client/`` never
imports the demo or the sandbox).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from client.errors import CliError, run_cli
from demo.environment import DemoEnvironment
from demo.supervisor import Supervisor
from logfmt import add_log_format_argument, configure_logging

__all__ = ["build_parser", "main", "run_demo"]

PROG = "arcctl demo"
# How often the foreground loop looks for a stop signal and dead children (seconds).
POLL_INTERVAL = 0.2


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``arcctl demo`` (``client/arcctl.py`` declares the same set
    for its help and forwards them; a test keeps the two equal)."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Run a sandbox API server, a development OIDC issuer, a relay and "
        "an agent on loopback, register cluster 'demo' and supervise them until Ctrl-C.")
    p.add_argument("--state-dir", type=Path, help="keep all files here (default: a temp dir, removed on exit)")
    p.add_argument("--relay-port", type=int, default=0, help="relay port (default: any free port)")
    p.add_argument("--kube-version", default="1.33.0", help="version the sandbox API server reports")
    p.add_argument("--no-restart", action="store_true",
                   help="leave a child that dies down instead of restarting it (its files stay until Ctrl-C)")
    p.add_argument("--replicas", type=int, default=1,
                   help="run N relays behind HAProxy, on PostgreSQL and Redis (Debian packages haproxy, "
                        "postgresql, redis-server; default 1: one relay on SQLite)")
    p.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    add_log_format_argument(p)
    return p


def _runnable(script: str) -> str:
    """How the user can run one of our console scripts from another shell:
    the bare name when PATH finds this installation's copy (venv activated),
    else its path — `./run demo` does not activate the venv. A non-default
    $ARC_CONFIG is carried along, since the other shell will not have it."""
    ours = Path(sys.executable).parent / script
    found = shutil.which(script)
    command = script if found and Path(found).resolve() == ours.resolve() else str(ours)
    if ours.exists() and command != script:
        try:
            command = str(ours.relative_to(Path.cwd()))
        except ValueError:
            pass
    config = os.environ.get("ARC_CONFIG")
    return f"ARC_CONFIG={shlex.quote(config)} {command}" if config else command


class DemoInterrupted(Exception):
    """SIGINT/SIGTERM arrived; raised only at a checkpoint of the demo."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Records SIGINT/SIGTERM instead of raising where the main thread happens
    to be. A ``KeyboardInterrupt`` thrown into ``subprocess``, ``print`` or the
    event loop can leave a lock held or a child unrecorded, and the demo then
    failed its own clean-up; here the signal only sets a flag and
    :meth:`check` raises :class:`DemoInterrupted` at points that are safe.
    A second signal during the stop is recorded and otherwise ignored: the stop
    is bounded (``demo.processes.STOP_TIMEOUT``) and leaves nothing behind."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._record)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _record(self, signum: int, _frame: Any) -> None:
        if not self.signum:
            self.signum = signum

    def check(self) -> None:
        """Raise :class:`DemoInterrupted` once a stop signal has arrived."""
        if self.signum:
            raise DemoInterrupted(self.signum)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo in the foreground until Ctrl-C/SIGTERM.

    Exit codes: 0 when stopped by SIGINT/SIGTERM at any point (start-up
    included) and everything was removed; a ``CliError`` code (one line) when a
    start-up step failed; 1 when a child could not be stopped. A child that
    dies after start-up is reported and restarted (``--no-restart``: left down).
    """
    def say(msg: str) -> None:
        print(msg, flush=True)

    stops = StopSignals()
    stops.install()
    env: DemoEnvironment | None = None
    code = 0
    try:
        try:
            env = DemoEnvironment(args.state_dir, relay_port=args.relay_port, say=say,
                                  kube_version=args.kube_version, checkpoint=stops.check,
                                  replicas=args.replicas)
        except OSError as err:
            raise CliError(f"cannot create the demo's files in {err.filename or args.state_dir}: "
                           f"{err.strerror}; pass a writable --state-dir") from None
        say(f"Starting the cluster-connect demo (files in {env.dir})")
        env.start()
        say("")
        say("Ready. In another shell run:")
        say(f"  {_runnable('arc-proxy')} -n demo")
        kubectl_note = "" if shutil.which("kubectl") else "   (kubectl is not on PATH: install it first)"
        say(f"  kubectl get pods -A{kubectl_note}")
        say("A child that dies is " + ("left down (--no-restart)" if args.no_restart else "restarted")
            + "; its files stay until the demo stops.")
        say("Ctrl-C here stops the demo and removes what it created.")
        supervisor = Supervisor(env, say, restart=not args.no_restart)
        while True:
            stops.check()
            supervisor.poll()
            time.sleep(POLL_INTERVAL)
    except DemoInterrupted:
        say("Stopping the demo...")
    finally:
        stuck = env.stop() if env is not None else []
        stops.restore()
        if stuck:
            print(f"{PROG}: {', '.join(stuck)} did not exit after SIGKILL; check it with ps",
                  file=sys.stderr)
            code = 1
        if env is not None:
            say("Demo stopped.")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m demo`` (what ``arcctl demo`` runs)."""
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.debug else logging.WARNING, args.log_format)
    return run_cli(PROG, lambda: run_demo(args), debug=args.debug)
