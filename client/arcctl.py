"""``arcctl``: manage clusters registered at the relay, and run the demo.

Subcommands are registered in ``COMMANDS`` so the lifecycle set (connect,
delete, role) slots in later without touching the dispatcher.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.arcctl_connect import add_connect
from client.arcctl_delete import add_delete
from client.arcctl_role import add_role
from client.auth import CachedTokenSource, TokenSource
from client.config import load_config
from client.errors import CliError, run_cli
from client.output import FORMATS, render
from client.relay_client import RelayApi
from logfmt import add_log_format_argument, configure_logging

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _common(p: argparse.ArgumentParser, *, output: bool = True) -> None:
    p.add_argument("--config", type=Path, help="client config (default: $ARC_CONFIG or "
                   "~/.config/cluster-connect/config.yaml)")
    if output:
        p.add_argument("-o", "--output", choices=FORMATS, default="json",
                       help="output format (default json)")
    p.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    add_log_format_argument(p)


def cmd_list(args: argparse.Namespace) -> int:
    """``arcctl list [-g GROUP]``."""
    config = load_config(args.config)

    async def go() -> list[dict[str, Any]]:
        async with RelayApi(config, TokenSource(config.auth)) as api:
            return await api.list_clusters(args.group)
    print(render(asyncio.run(go()), args.output))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``arcctl show -n NAME [-g GROUP]``."""
    config = load_config(args.config)
    group = args.group or config.resource_group

    async def go() -> dict[str, Any]:
        async with RelayApi(config, TokenSource(config.auth)) as api:
            return await api.get_cluster(group, args.name)
    print(render(asyncio.run(go()), args.output))
    return 0


def cmd_get_token(args: argparse.Namespace) -> int:
    """``arcctl get-token``: a client-go exec credential plugin. Prints an
    ``ExecCredential`` (client.authentication.k8s.io/v1) with the user's token."""
    config = load_config(args.config)
    token = asyncio.run(CachedTokenSource(config.auth).get_token())
    expires = dt.datetime.fromtimestamp(token.expires_at, dt.UTC)
    cred = {
        "kind": "ExecCredential",
        "apiVersion": "client.authentication.k8s.io/v1",
        "spec": {"interactive": False},
        "status": {
            "token": token.access_token,
            "expirationTimestamp": expires.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        },
    }
    print(json.dumps(cred))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``arcctl demo``: runs ``python -m demo`` in this process's place (the demo
    imports the sandbox; ``client`` never does), with the same flags."""
    if importlib.util.find_spec("demo") is None:
        raise CliError("the demo is not installed here: pip install 'cluster-connect[demo]'")
    argv = [sys.executable, "-m", "demo", "--relay-port", str(args.relay_port),
            "--kube-version", args.kube_version, "--log-format", args.log_format]
    if args.state_dir is not None:
        argv += ["--state-dir", str(args.state_dir)]
    if args.no_restart:
        argv.append("--no-restart")
    if args.debug:
        argv.append("--debug")
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached: execv replaces this process


def _add_list(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("list", help="list registered clusters")
    p.add_argument("-g", "--resource-group", dest="group", help="only this resource group")
    _common(p)
    p.set_defaults(func=cmd_list)


def _add_show(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("show", help="show one cluster, with connectivityStatus")
    p.add_argument("-n", "--name", required=True, help="cluster name")
    p.add_argument("-g", "--resource-group", dest="group", help="resource group (default: from config)")
    _common(p)
    p.set_defaults(func=cmd_show)


def _add_get_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("get-token", help="print an ExecCredential (kubectl exec credential plugin)")
    _common(p, output=False)
    p.set_defaults(func=cmd_get_token)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run sandbox API server, OIDC issuer, relay and agent on loopback")
    p.add_argument("--state-dir", type=Path, help="keep all files here (default: a temp dir, removed on exit)")
    p.add_argument("--relay-port", type=int, default=0, help="relay port (default: any free port)")
    p.add_argument("--kube-version", default="1.33.0", help="version the sandbox API server reports")
    p.add_argument("--no-restart", action="store_true",
                   help="leave a child that dies down instead of restarting it (its files stay until Ctrl-C)")
    _common(p, output=False)
    p.set_defaults(func=cmd_demo)


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_demo, _add_list, _add_show, _add_get_token,
    add_connect, add_delete,
    add_role,
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arcctl", description=__doc__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arcctl``."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    configure_logging(logging.DEBUG if debug else logging.WARNING, getattr(args, "log_format", "text"))
    func: Handler = args.func
    return run_cli(f"arcctl {args.command}", lambda: func(args), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
