"""``arc-relay [--config FILE] [--debug]``: serve the relay until SIGTERM/SIGINT.

Without ``--config`` the embedded defaults apply: listen on 127.0.0.1:8443,
state (SQLite file, development TLS) under ``~/.local/state/cluster-connect/relay``.
Prints one line with the URL (and the dev CA file) when serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from logfmt import add_log_format_argument, configure_logging
from relay.app import RelayServer
from relay.config import ConfigError, load_relay_config
from tunnel.aio_alloc import tune_allocator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arc-relay", description="Serve the cluster-connect relay.")
    parser.add_argument("--config", metavar="FILE", help="relay config (YAML); default: embedded defaults")
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    add_log_format_argument(parser)
    return parser


async def _serve(server: RelayServer) -> None:
    await server.start()
    ca = f" ca_file={server.ca_file}" if server.ca_file else ""
    print(f"arc-relay: serving {server.url}{ca}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arc-relay``; returns the exit status."""
    args = _parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.debug else logging.INFO, args.log_format)
    try:
        config = load_relay_config(args.config)
        tune_allocator()  # bulk frames: see tunnel/aio_alloc.py
        asyncio.run(_serve(RelayServer(config)))
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"arc-relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the operator; --debug shows the traceback
        if args.debug:
            raise
        print(f"arc-relay: unexpected error: {type(exc).__name__}: {exc} (rerun with --debug)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
