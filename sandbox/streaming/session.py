"""Running one exec/attach process against the runtime, shared by the
websocket and SPDY transports: they supply a ``ProcessIO`` and get the exit
status (or an error message) back."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sandbox.runtime import PodRuntime, ProcessIO
from sandbox.streaming.options import StreamOptions

log = logging.getLogger("sandbox.streaming")


async def run_process(kind: str, runtime: PodRuntime, opts: StreamOptions,
                      io: ProcessIO) -> tuple[int | None, str | None]:
    """Run exec/attach; (exit code, None) or (None, error message)."""
    try:
        if kind == "attach":
            return await runtime.attach(opts.container, io), None
        return await runtime.exec(opts.container, opts.command, io), None
    except asyncio.CancelledError:
        raise
    except (ConnectionError, OSError):
        # The client went away mid-write: nobody is left to tell.
        log.info("%s in pod %s: client connection lost", kind, runtime.name)
        return None, "connection lost"
    except Exception as exc:  # a sandbox bug must not kill the server
        log.exception("%s failed in pod %s", kind, runtime.name)
        return None, f"internal error running {kind}: {type(exc).__name__}"


async def wait_first(main: asyncio.Task[Any], *others: asyncio.Future[Any]) -> None:
    """Wait for ``main``; cancel it if any of ``others`` finishes first."""
    done, _ = await asyncio.wait({main, *others}, return_when=asyncio.FIRST_COMPLETED)
    if main not in done:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
