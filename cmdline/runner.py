"""``run_cli``: the one place where a command's errors become exit codes.

``arc-relay``, ``arc-agent``, ``arc-proxy`` and ``arcctl`` parse their flags,
then hand the rest of the work to :func:`run_cli`, so each kind of failure
looks and exits the same whichever command hit it (table: ``cmdline.errors``).
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

from cmdline.errors import INTERNAL_ERROR, INTERRUPTED, TERMINATED, CliError, Terminated

__all__ = ["run_cli"]


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread
    (as SIGINT raises ``KeyboardInterrupt``) so ``finally`` blocks run.

    Left alone when called off the main thread or when someone already
    handles SIGTERM; a daemon's own ``loop.add_signal_handler`` replaces this
    while it serves, so a serving daemon stops cleanly instead.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _one_line(text: str) -> str:
    """An exception's text on one line: an internal error's message is not ours
    to format and may span lines."""
    return " ".join(text.split())


def _quiet_interrupted_coroutines() -> None:
    """A signal that lands between creating a coroutine and awaiting it (e.g.
    inside aiohttp's connect) leaves that coroutine unawaited; Python then
    warns on stderr when it is collected. The user asked the command to stop:
    that is expected, not a fault to report."""
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def run_cli(prog: str, body: Callable[[], int], *, debug: bool, stderr: TextIO | None = None) -> int:
    """Run ``body`` and turn every way it can fail into one line and an exit code.

    - a :class:`~cmdline.errors.CliError`: ``PROG: message``, its ``exit_code``;
    - Ctrl-C: 130, SIGTERM: 143, nothing printed (the user asked for it);
    - anything else (a bug): ``PROG: internal error: Type: message (rerun with
      --debug)`` and 70.

    With ``debug`` the traceback is printed above the line as well.

    Args:
        prog: the command as the user typed it (``arcctl list``), prefixed to the line.
        body: the command itself; returns the exit code.
        debug: also print tracebacks.
        stderr: where the line goes (default ``sys.stderr``).

    Returns:
        The exit code to pass to ``sys.exit``.
    """
    out = stderr if stderr is not None else sys.stderr
    try:
        with _sigterm_raises():
            return body()
    except CliError as err:
        if debug:
            traceback.print_exc(file=out)
        print(f"{prog}: {err}", file=out, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        _quiet_interrupted_coroutines()
        return INTERRUPTED
    except Terminated:
        _quiet_interrupted_coroutines()
        return TERMINATED
    except Exception as err:  # a bug: still one line, the traceback only on request
        if debug:
            traceback.print_exc(file=out)
        hint = "" if debug else " (rerun with --debug)"
        print(f"{prog}: internal error: {type(err).__name__}: {_one_line(str(err))}{hint}",
              file=out, flush=True)
        return INTERNAL_ERROR
