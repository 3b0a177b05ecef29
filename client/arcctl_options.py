"""The options every ``arcctl`` subcommand takes, written once."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.output import FORMATS
from logfmt import add_log_format_argument

__all__ = ["CONFIG_HELP", "add_cluster_options", "add_common_options"]

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


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``-n/--name``, ``-g/--resource-group``, ``--kube-config``, ``--kube-context``:
    which registered cluster, and which Kubernetes cluster it is (connect, delete)."""
    parser.add_argument("-n", "--name", required=True, metavar="NAME", help="the cluster's name at the relay")
    parser.add_argument("-g", "--resource-group", dest="group", metavar="GROUP",
                        help="its resource group (default: resource_group in the client config)")
    parser.add_argument("--kube-config", metavar="FILE",
                        help="kubeconfig of the cluster (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--kube-context", metavar="CONTEXT",
                        help="kubeconfig context of the cluster (default: the current context)")
