"""``arcctl known-cas list|forget``: the serving CAs arc-proxy pinned
(``client/known_clusters.py``), as ``ssh-keygen -F``/``-R`` for ``known_hosts``."""

from __future__ import annotations

import argparse
import sys

from client.arcctl_options import add_common_options
from client.config import load_config
from client.errors import CliError
from client.known_clusters import KnownClusters, format_fingerprint
from client.output import render
from cmdline import Subcommands, add_command

__all__ = ["add_known_clusters"]


def cmd_list(args: argparse.Namespace) -> int:
    """Every pin of the file next to the client config."""
    config = load_config(args.config)
    known = KnownClusters.beside(config.path)
    rows = [{"relayUrl": p.relay_url, "cluster": p.cluster_id, "servingCaFingerprint":
             format_fingerprint(p.fingerprint), "tlsServerName": p.server_name} for p in known.pins()]
    print(render(rows, args.output))
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Remove a cluster's pin so the next arc-proxy records the CA afresh."""
    config = load_config(args.config)
    known = KnownClusters.beside(config.path)
    cluster_id = f"{args.group or config.resource_group}/{args.name}"
    relay = None if args.all_relays else config.relay_url
    if not known.forget(cluster_id, relay):
        where = "any relay" if relay is None else relay
        raise CliError(f"no pinned serving CA for cluster {cluster_id} at {where} in {known.path}: "
                       "see arcctl known-cas list")
    print(f"Forgot the pinned serving CA of cluster {cluster_id}; the next arc-proxy -n {args.name} pins "
          "the one the relay names then", file=sys.stderr)
    return 0


def add_known_clusters(sub: Subcommands) -> None:
    """``arcctl known-cas`` and its two subcommands."""
    p = add_command(sub, "known-cas", summary="the cluster serving CAs arc-proxy pinned",
                    examples=["arcctl known-cas list -o table", "arcctl known-cas forget -n edge-1 -g lab"])
    inner = p.add_subparsers(dest="known_command", metavar="SUBCOMMAND", title="subcommands")
    inner.required = True
    lst = add_command(inner, "list", summary="every pinned cluster CA (file known_clusters next to the config)",
                      examples=["arcctl known-cas list"])
    add_common_options(lst)
    lst.set_defaults(func=cmd_list)
    forget = add_command(inner, "forget", summary="remove a cluster's pin (after a deliberate re-registration)",
                         examples=["arcctl known-cas forget -n edge-1 -g lab"])
    forget.add_argument("-n", "--name", required=True, metavar="NAME", help="the cluster's name at the relay")
    forget.add_argument("-g", "--resource-group", dest="group", metavar="GROUP",
                        help="its resource group (default: resource_group in the client config)")
    forget.add_argument("--all-relays", action="store_true",
                        help="forget its pins at every relay, not only the config's")
    add_common_options(forget, output=False)
    forget.set_defaults(func=cmd_forget)
