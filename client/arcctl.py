"""``arcctl``: manage clusters registered at the relay, and run the demo.

Each subcommand is registered by one function in ``COMMANDS``; ``main``
parses, then hands the chosen subcommand to ``cmdline.run_cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.arcctl_central_rbac import add_update
from client.arcctl_connect import add_connect
from client.arcctl_delete import add_delete
from client.arcctl_entry import config_path, exec_credential
from client.arcctl_known_clusters import add_known_clusters
from client.arcctl_options import add_common_options
from client.arcctl_role import add_role
from client.auth import CachedTokenSource, TokenSource
from client.client_credentials import uses_client_credentials
from client.config import AuthConfig, ClientConfig, load_config
from client.login import cached_token, login
from client.output import render, with_certificate_fingerprints
from client.relay_client import RelayApi
from client.token_cache import TokenCache
from cmdline import (
    CliError,
    CommandParser,
    ConfigError,
    Subcommands,
    add_command,
    add_version_argument,
    help_epilog,
    run_cli,
)
from logfmt import configure_logging

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
Manage the clusters registered at a cluster-connect relay, and run a demo of
the whole path on this machine.

Every command but demo talks to the relay named in the client config
(--config FILE, $ARC_CONFIG, else ~/.config/cluster-connect/config.yaml) and
signs in as that file says. To use kubectl on a registered cluster, run
arc-proxy -n NAME."""

EXAMPLES = (
    "arcctl demo                                 # everything on loopback, Ctrl-C stops it",
    "arcctl login                                # sign in with auth.issuer (device code or browser)",
    "arcctl connect -n edge-1 -g lab             # register + deploy the agent",
    "arcctl list -o table",
    "arcctl show -n edge-1 -g lab",
    "arcctl role assign --role cluster-user --assignee OBJECT_ID -n edge-1 -g lab",
    "arcctl delete -n edge-1 -g lab -y",
    "arcctl SUBCOMMAND --help                    # the options of one subcommand",
)


def cmd_list(args: argparse.Namespace) -> int:
    """``arcctl list [-g GROUP]``."""
    config = load_config(args.config)

    async def go() -> list[dict[str, Any]]:
        async with RelayApi(config, TokenSource(config.auth.for_relay())) as api:
            return await api.list_clusters(args.group)
    clusters = asyncio.run(go())
    if not args.show_certificates:
        clusters = [with_certificate_fingerprints(c) for c in clusters]
    print(render(clusters, args.output))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``arcctl show -n NAME [-g GROUP]``."""
    config = load_config(args.config)
    group = args.group or config.resource_group

    async def go() -> dict[str, Any]:
        async with RelayApi(config, TokenSource(config.auth.for_relay())) as api:
            return await api.get_cluster(group, args.name)
    cluster = asyncio.run(go())
    print(render(cluster if args.show_certificates else with_certificate_fingerprints(cluster), args.output))
    return 0


def cmd_get_token(args: argparse.Namespace) -> int:
    """``arcctl get-token``: a client-go exec credential plugin. Prints an
    ``ExecCredential`` (client.authentication.k8s.io/v1) with the user's token.
    With a fresh cached token, :mod:`client.arcctl_entry` answers before this
    module is even imported; this is the path that renews or signs in."""
    config = load_config(args.config)
    if args.pop:
        return _get_pop_token(config, args.pop_target)
    cache = TokenCache()
    path = config_path(str(args.config) if args.config else None)
    auth = config.auth
    if auth.issuer and not auth.token_endpoint and not auth.token_command \
            and not uses_client_credentials(auth):  # as TokenSource decides
        account = asyncio.run(cached_token(config.auth, cache, interactive=sys.stdin.isatty()))
        token, expires_at = account.access_token, account.expires_at
        cache.index(path, cache.path, account.key)
    else:
        source = CachedTokenSource(config.auth)
        got = asyncio.run(source.get_token())
        token, expires_at = got.access_token, got.expires_at
        cache.index(path, source.path, None)
    print(exec_credential(token, expires_at))
    return 0


def _get_pop_token(config: ClientConfig, target: str | None) -> int:
    """``get-token --pop``: a signed HTTP request for ``target`` around a token
    bound to the user's key (docs/pop.md). kubectl keeps it until its expiry
    (a few minutes), so this path need not be the lean one."""
    from client.pop import SHR_LIFETIME, bound_token, load_or_create_key, sign_shr

    if not target:
        raise ConfigError("arcctl get-token --pop needs --pop-target HOST: the cluster's tls-server-name "
                          "(arc-proxy writes it into the kubeconfig)")
    key = load_or_create_key()
    token = asyncio.run(bound_token(config.auth, key, interactive=sys.stdin.isatty()))
    shr = sign_shr(key, token.access_token, target)
    print(exec_credential(shr, min(token.expires_at, time.time() + SHR_LIFETIME)))
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    """``arcctl login [--method devicecode|browser]``."""
    config = load_config(args.config)
    if config.auth.login == "client_credentials" and not args.method:
        raise CliError("auth.login is client_credentials in the client config: a workload needs no sign-in, "
                       "arcctl get-token and arc-proxy get its tokens (or pass --method devicecode)")
    account = asyncio.run(login(config.auth, method=args.method))
    print(f"signed in to {account.issuer} as {account.username or account.account}", file=sys.stderr)
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    """``arcctl logout [--all]``."""
    cache = TokenCache()
    if args.all:
        removed = cache.remove(None, None)
    else:
        auth = load_config(args.config).auth
        if not auth.issuer:
            raise CliError("client config has no auth.issuer, so no login to remove: "
                           "pass --all to remove every cached login")
        removed = cache.remove(auth.issuer, auth.client_id or "arc-cli")
    for a in removed:
        print(f"signed out {a.username or a.account} from {a.issuer}", file=sys.stderr)
    if not removed:
        print("no cached login to remove", file=sys.stderr)
    return 0


def cmd_account_show(args: argparse.Namespace) -> int:
    """``arcctl account show``: the signed-in account, never its token."""
    auth = load_config(args.config).auth
    if uses_client_credentials(auth):
        print(render(_application_summary(auth), args.output))
        return 0
    if not auth.issuer:
        raise CliError("client config has no auth.issuer: `arcctl account show` shows an "
                       "`arcctl login` account; add auth.issuer and run `arcctl login`")
    account = TokenCache().current(auth.issuer, auth.client_id or "arc-cli")
    if account is None:
        raise CliError(f"not logged in to {auth.issuer}: run `arcctl login`")
    print(render(account.summary(), args.output))
    return 0


def _application_summary(auth: AuthConfig) -> dict[str, Any]:
    """Who a workload is (client-credentials grant): from its cached or a new
    token's claims, never the token."""
    import time

    import jwt

    token = asyncio.run(CachedTokenSource(auth).get_token())
    try:
        claims = jwt.decode(token.access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        claims = {}  # an opaque token: only what the config says
    return {"type": "application", "clientId": claims.get("azp") or claims.get("appid") or auth.client_id,
            "account": claims.get("oid") or claims.get("sub"), "tenant": claims.get("tid"),
            "issuer": claims.get("iss") or auth.issuer,
            "expiresOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires_at))}


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
    if args.replicas != 1:
        argv += ["--replicas", str(args.replicas)]
    if args.debug:
        argv.append("--debug")
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached: execv replaces this process


def _add_show_certificates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show-certificates", action="store_true",
                   help="print the agent and serving CA certificates (PEM) instead of their "
                        "SHA-256 fingerprints (agentPublicKeyCertificateSha256, servingCaCertificateSha256)")


def _add_list(sub: Subcommands) -> None:
    p = add_command(sub, "list", summary="list the registered clusters and their status",
                    examples=["arcctl list", "arcctl list -g lab -o table"])
    p.add_argument("-g", "--resource-group", dest="group", metavar="GROUP",
                   help="only the clusters of this resource group (default: all you may see)")
    _add_show_certificates(p)
    add_common_options(p)
    p.set_defaults(func=cmd_list)


def _add_show(sub: Subcommands) -> None:
    p = add_command(sub, "show", summary="show one cluster: status, versions, node and core counts",
                    description="connectivityStatus is Connecting, Connected or Offline;\n"
                                "lastConnectivityTime says when the agent was last seen.",
                    examples=["arcctl show -n edge-1 -g lab", "arcctl show -n edge-1 -o yaml"])
    p.add_argument("-n", "--name", required=True, metavar="NAME", help="the cluster's name")
    p.add_argument("-g", "--resource-group", dest="group", metavar="GROUP",
                   help="its resource group (default: resource_group in the client config)")
    _add_show_certificates(p)
    add_common_options(p)
    p.set_defaults(func=cmd_show)


def _add_get_token(sub: Subcommands) -> None:
    p = add_command(
        sub, "get-token", summary="print your token as a kubectl ExecCredential",
        description="kubectl runs this itself: arc-proxy writes it into the kubeconfig as an\n"
                    "exec credential plugin, so tokens are refreshed from the token cache.",
        examples=["arcctl get-token --config ~/.config/cluster-connect/config.yaml",
                  "arcctl get-token --pop --pop-target demo.default.kube-aad-proxy.cluster-connect.local"])
    p.add_argument("--pop", action="store_true",
                   help="print a proof-of-possession token (docs/pop.md): your token, bound to a key "
                        "kept beside the token cache, inside a request signed for one cluster")
    p.add_argument("--pop-target", metavar="HOST",
                   help="with --pop: the cluster it is for, its tls-server-name")
    add_common_options(p, output=False)
    p.set_defaults(func=cmd_get_token)


def _add_login(sub: Subcommands) -> None:
    p = add_command(
        sub, "login", summary="sign in (device code or browser) and cache the token",
        description="Uses auth.issuer's discovery document. devicecode prints a URL and a code\n"
                    "on stderr to enter on any device; browser opens the sign-in page and\n"
                    "takes the answer on a loopback port. The token is cached (mode 0600) and\n"
                    "renewed silently by get-token until the refresh token runs out.",
        examples=["arcctl login", "arcctl login --method browser"])
    p.add_argument("--method", choices=["devicecode", "browser"],
                   help="how to sign in (default: auth.login in the client config, else devicecode)")
    add_common_options(p, output=False)
    p.set_defaults(func=cmd_login)


def _add_logout(sub: Subcommands) -> None:
    p = add_command(sub, "logout", summary="forget the cached login",
                    examples=["arcctl logout", "arcctl logout --all"])
    p.add_argument("--all", action="store_true", help="forget every cached login, of every issuer")
    add_common_options(p, output=False)
    p.set_defaults(func=cmd_logout)


def _add_account(sub: Subcommands) -> None:
    p = add_command(sub, "account", summary="the signed-in account", examples=["arcctl account show"])
    inner = p.add_subparsers(dest="account_command", metavar="SUBCOMMAND", title="subcommands")
    inner.required = True
    show = add_command(inner, "show", summary="who is signed in (never the token)",
                       examples=["arcctl account show", "arcctl account show -o yaml"])
    add_common_options(show)
    show.set_defaults(func=cmd_account_show)


def _add_demo(sub: Subcommands) -> None:
    p = add_command(
        sub, "demo", summary="run a sandbox cluster, OIDC issuer, relay and agent on loopback",
        description="Registers cluster 'demo' and prints what to run next (arc-proxy -n demo,\n"
                    "then kubectl). A child that dies is reported and restarted (--no-restart:\n"
                    "left down). Ctrl-C stops everything and removes what it made.",
        examples=["arcctl demo", "arcctl demo --state-dir ./demo-state --relay-port 8443",
                  "arcctl demo --replicas 3   # relays behind HAProxy, on PostgreSQL and Redis"])
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="keep every file of the demo here (default: a temporary folder, "
                        "removed on exit)")
    p.add_argument("--relay-port", type=int, default=0, metavar="PORT",
                   help="port of the relay on 127.0.0.1 (default: any free port)")
    p.add_argument("--kube-version", default="1.33.0", metavar="VERSION",
                   help="Kubernetes version the sandbox API server reports (default 1.33.0)")
    p.add_argument("--no-restart", action="store_true",
                   help="leave a child that dies down instead of restarting it (its files stay until Ctrl-C)")
    p.add_argument("--replicas", type=int, default=1, metavar="N",
                   help="run N relays behind HAProxy, on PostgreSQL and Redis (Debian packages haproxy, "
                        "postgresql, redis-server; default 1: one relay on SQLite)")
    add_common_options(p, output=False)
    p.set_defaults(func=cmd_demo)


COMMANDS: list[Callable[[Subcommands], None]] = [
    _add_demo, _add_login, _add_logout, _add_account, _add_list, _add_show, _add_get_token,
    add_connect, add_delete, add_update,
    add_role, add_known_clusters,
]


def build_parser() -> CommandParser:
    """The ``arcctl`` command line with every subcommand in ``COMMANDS``."""
    p = CommandParser(prog="arcctl", description=DESCRIPTION, epilog=help_epilog(EXAMPLES))
    add_version_argument(p)
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", title="subcommands")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arcctl``."""
    args = build_parser().parse_args(argv)
    debug = bool(args.debug)
    configure_logging(logging.DEBUG if debug else logging.WARNING, args.log_format)
    func: Handler = args.func
    # command_prog is set by cmdline.add_command; a subcommand added otherwise
    # is named by its first word.
    prog = getattr(args, "command_prog", f"arcctl {args.command}")
    return run_cli(prog, lambda: func(args), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
