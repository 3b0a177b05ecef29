"""``arc-relay``: serve the relay until SIGTERM/SIGINT.

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

from cmdline import CommandParser, ConfigError, add_version_argument, help_epilog, run_cli
from logfmt import add_log_format_argument, configure_logging
from relay import config as relay_config
from relay.app import RelayServer
from relay.config import load_relay_config
from tunnel.aio import tune_allocator

__all__ = ["build_parser", "main"]

PROG = "arc-relay"
log = logging.getLogger("relay")

DESCRIPTION = """\
Serve the cluster-connect relay: agents inside clusters dial out to it, and
arc-proxy users reach their clusters through it. It listens with TLS and prints
one line with its URL when it serves; SIGTERM or Ctrl-C stops it (exit 0); SIGHUP
re-reads the config file and applies its oidc issuers and admins (sessions stay).

Without --config it serves on 127.0.0.1:8443 with a development certificate and
keeps its state (one SQLite file) in ~/.local/state/cluster-connect/relay."""

EXAMPLES = (
    "# try it on this machine, embedded defaults",
    "arc-relay",
    "# production: your certificate, OIDC issuers and admins in a config file",
    "arc-relay --config /etc/cluster-connect/relay.yaml --log-format json",
)


def build_parser() -> CommandParser:
    """The ``arc-relay`` command line."""
    parser = CommandParser(prog=PROG, description=DESCRIPTION, epilog=help_epilog(EXAMPLES))
    parser.add_argument("--config", metavar="FILE",
                        help="relay config file (YAML; keys in docs/config.md); "
                             "default: the embedded defaults above")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG and print tracebacks of unexpected errors")
    add_log_format_argument(parser)
    add_version_argument(parser)
    return parser


async def _serve(server: RelayServer, config_path: str | None = None) -> None:
    await server.start()
    ca = f" ca_file={server.ca_file}" if server.ca_file else ""
    print(f"{PROG}: serving {server.url}{ca}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = asyncio.ensure_future(_reload(server, config_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)
    loop.add_signal_handler(signal.SIGHUP, hangup)
    await stop.wait()
    await server.stop()


async def _reload(server: RelayServer, config_path: str | None) -> None:
    """SIGHUP: read the config file again and apply its issuers and admins
    (RelayServer.reload_identity); a bad file changes nothing and says why in one line."""
    try:
        await server.reload_identity(load_relay_config(config_path))
    except relay_config.ConfigError as exc:
        log.error("configuration reload refused, the previous configuration stays in force: %s",
                  str(exc).replace("\n", "; "))


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_relay_config(args.config)
        tune_allocator()  # bulk frames: see tunnel/aio_alloc.py
        asyncio.run(_serve(RelayServer(config), args.config))
    except relay_config.ConfigError as exc:
        # relay.config's own type until its loader raises cmdline's ConfigError
        # (issue 13 item 2); then this clause changes nothing.
        raise ConfigError(str(exc)) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arc-relay``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.debug else logging.INFO, args.log_format)
    return run_cli(PROG, lambda: _run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
