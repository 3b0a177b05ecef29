"""The options every ``arcctl`` subcommand takes, written once."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.output import FORMATS
from logfmt import add_log_format_argument

__all__ = ["CONFIG_HELP", "add_common_options"]

CONFIG_HELP = ("default ~/.config/cluster-connect/config.yaml, or $ARC_CONFIG when set: "
               "the client config, with the relay URL and how to sign in")


def add_common_options(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    """``--config``, ``-o/--output`` (unless ``output`` is False), ``--debug``, ``--log-format``."""
    parser.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    if output:
        parser.add_argument("-o", "--output", choices=FORMATS, default="json",
                            help="print the result as json (default), yaml or a table")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG and print tracebacks of unexpected errors")
    add_log_format_argument(parser)
