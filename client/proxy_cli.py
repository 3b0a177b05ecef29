"""``arc-proxy``: serve one cluster on 127.0.0.1:PORT through the relay and
merge a matching context into the kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from client import kubeconfig
from client.arcctl_options import CONFIG_HELP
from client.auth import TokenSource
from client.config import load_config
from client.errors import AgentOffline, CliError, ConfigError, run_cli
from client.known_clusters import KnownClusters, check_pin, parse_fingerprint
from client.listener import LocalListener, refusal_error
from client.relay_client import RelayApi, RelaySessionKeeper
from cmdline import INTERRUPTED, TERMINATED, CommandParser, add_version_argument, help_epilog
from logfmt import add_log_format_argument, configure_logging
from tunnel.aio import tune_allocator

__all__ = ["main"]

log = logging.getLogger("client")

PROG = "arc-proxy"
DEFAULT_PORT = 47011
PROBE_TIMEOUT = 15.0
KUBECONFIG_MODES = ("proxy-url", "direct")
DEFAULT_KUBECONFIG_MODE = "proxy-url"

DESCRIPTION = """\
Serve one registered cluster on https://127.0.0.1:PORT through the relay, and
merge a context named after it into your kubeconfig, made current: kubectl in
another shell then reaches the cluster. kubectl's TLS ends inside the cluster,
not here. Ctrl-C or SIGTERM stops it (exit 0)."""

EXAMPLES = (
    "arc-proxy -n edge-1 -g lab          # then, in another shell: kubectl get pods -A",
    "arc-proxy -n demo --port 0 -f ./demo.kubeconfig",
    "arc-proxy -n edge-1 --token \"$(cat sa.token)\"   # as a service account",
)

NOTES = """\
The cluster entry has server https://NAME.GROUP.arc-proxy.invalid (a host that
never resolves) and proxy-url http://127.0.0.1:PORT: kubectl CONNECTs through
arc-proxy, so when there is no way to the cluster (relay down, cluster offline,
forbidden) kubectl prints arc-proxy's reason. --kubeconfig-mode direct writes
server https://127.0.0.1:PORT instead (kubectl then only sees "remote error:
tls: internal error" and the cause is in this shell); a registration without a
tlsServerName gets the direct shape, with a warning. On exit current-context is
put back to what it was before, if it still names this cluster's context. The
cluster, user and context entries stay in the kubeconfig so the next run reuses
them; with --token the token stays in the user entry (the file is mode 0600).
Nothing else in the file is changed."""


def build_parser() -> CommandParser:
    """The ``arc-proxy`` command line."""
    p = CommandParser(prog=PROG, description=DESCRIPTION, epilog=help_epilog(EXAMPLES, notes=NOTES))
    p.add_argument("-n", "--name", required=True, metavar="NAME", help="the cluster's name at the relay")
    p.add_argument("-g", "--resource-group", dest="group", metavar="GROUP",
                   help="its resource group (default: resource_group in the client config)")
    p.add_argument("--token", metavar="TOKEN",
                   help="a service-account token to put in the kubeconfig user; default: your "
                        "own sign-in, through the exec credential plugin 'arcctl get-token'")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="PORT",
                   help=f"local port on 127.0.0.1 (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("-f", "--file", metavar="KUBECONFIG",
                   help="kubeconfig to merge into (default: $KUBECONFIG or ~/.kube/config); "
                        "'-' prints a kubeconfig on stdout instead")
    # None: the default, which falls back to direct for a registration that
    # cannot have the proxy-url shape (see kubeconfig.cluster_address).
    p.add_argument("--kubeconfig-mode", choices=KUBECONFIG_MODES, default=None,
                   help="proxy-url: kubectl CONNECTs through arc-proxy (server https://NAME.GROUP."
                        f"{kubeconfig.PROXY_SERVER_DOMAIN}, proxy-url http://127.0.0.1:PORT), so a "
                        "refusal reaches kubectl with its cause; direct: server https://127.0.0.1:PORT "
                        f"(default {DEFAULT_KUBECONFIG_MODE}; the port serves both)")
    p.add_argument("--kube-context", metavar="CONTEXT",
                   help="name of the context to write (default: the cluster's name)")
    p.add_argument("--ca-fingerprint", metavar="sha256:HEX",
                   help="the cluster's serving CA fingerprint, handed out of band (arcctl connect prints "
                        "it): refuse any other, and pin it")
    p.add_argument("--accept-new-ca", action="store_true",
                   help="accept a serving CA that differs from the one pinned in known_clusters (next to "
                        "the client config) and pin the new one")
    p.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log every kubectl connection and relay session event")
    p.add_argument("--debug", action="store_true",
                   help="log at DEBUG and print tracebacks of unexpected errors")
    add_log_format_argument(p)
    add_version_argument(p)
    return p


def _arcctl_command() -> tuple[str, list[str]]:
    # Prefer the arcctl installed next to this interpreter (the venv), so the
    # kubeconfig works from any shell.
    candidate = Path(sys.executable).parent / "arcctl"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate), []
    found = shutil.which("arcctl")
    if found:
        return found, []
    return sys.executable, ["-m", "client.arcctl_entry"]  # the lean entry: get-token runs on every kubectl call


def _display(path: Path) -> str:
    home = str(Path.home())
    s = str(path)
    return "~" + s[len(home):] if s.startswith(home + os.sep) else s


async def _probe(keeper: RelaySessionKeeper, target: bytes) -> None:
    """Open and cancel one stream so agent-offline / forbidden show up now, as
    one line, rather than as a kubectl connection error later."""
    import tunnel

    session = await keeper.session()
    try:
        stream = await session.open_stream(target, timeout=PROBE_TIMEOUT)
    except tunnel.StreamRefused as err:
        raise refusal_error(err.code, err.reason, target.decode()) from None
    except TimeoutError:
        raise AgentOffline(f"cluster {target.decode()} did not answer within {PROBE_TIMEOUT:.0f} s: "
                           "check that its agent is running") from None
    stream.reset(tunnel.ErrorCode.CANCEL, "probe")


def _kube_user(args: argparse.Namespace, config_path: Path | None, pop_target: str | None) -> dict[str, Any]:
    if args.token:
        return kubeconfig.token_user(args.token)
    command, prefix = _arcctl_command()
    extra = ["--config", str(config_path.resolve())] if config_path else []
    if pop_target:  # a token usable at this cluster only (docs/pop.md)
        extra += ["--pop", "--pop-target", pop_target]
    return kubeconfig.exec_user(command, [*prefix, "get-token", *extra])


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    group = args.group or config.resource_group
    cluster_id = f"{group}/{args.name}"
    target = cluster_id.encode()
    context = args.kube_context or args.name
    if args.file == "-":
        kube_path = None
    else:
        kube_path = Path(args.file).expanduser() if args.file else kubeconfig.default_kubeconfig_path()
        kubeconfig.load(kube_path)  # fail early on an unreadable kubeconfig

    tokens = TokenSource(config.auth.for_relay())
    keeper = RelaySessionKeeper(config, tokens, name=f"arc-proxy:{cluster_id}")
    proxy_host = kubeconfig.proxy_server_host(group, args.name)
    # A CONNECT must name this cluster's host: another kubeconfig's proxy-url
    # pointing here by mistake is told so instead of reaching this cluster.
    listener = LocalListener(keeper, target, port=args.port, connect_authority=f"{proxy_host}:443")
    await listener.bind()
    previous: str | None = None
    merged = False
    # Ctrl-C/SIGTERM at any point (also during start-up) ends the wait below or
    # cancels the step in progress; the finally block then undoes what was done.
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    ready = False
    stopped_by: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        stopped_by.append(sig)
        stop.set()
        if not ready and main_task is not None:
            main_task.cancel()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with RelayApi(config, tokens) as api:
            reg = await api.get_cluster(group, args.name, command="arc-proxy", role="cluster-user")
        if reg.get("connectivityStatus") == "Offline":
            raise AgentOffline(f"cluster {cluster_id} is offline (its agent is not connected to the "
                               "relay): check that arc-agent is running in the cluster")
        ca = reg.get("servingCaCertificate")
        if not ca:
            raise CliError(f"cluster {cluster_id} has no servingCaCertificate in its registration: "
                           "re-register it")
        pinned = check_pin(KnownClusters.beside(config.path), config.relay_url, cluster_id, str(ca).encode(),
                           str(reg.get("tlsServerName") or ""), expected=args.ca_fingerprint,
                           accept_new=args.accept_new_ca)
        if pinned:
            print(pinned, file=sys.stderr, flush=True)
        await keeper.start()
        await _probe(keeper, target)

        server_name = reg.get("tlsServerName") or None
        if args.kubeconfig_mode is None and not server_name:
            log.warning("cluster %s has no tlsServerName in its registration: the kubeconfig gets "
                        "the direct shape, where kubectl does not see arc-proxy's causes; "
                        "re-register it for the proxy-url shape", cluster_id)
        server, proxy_url = kubeconfig.cluster_address(
            args.kubeconfig_mode or DEFAULT_KUBECONFIG_MODE, cluster_id, proxy_host, listener.port,
            server_name, explicit=args.kubeconfig_mode is not None)
        entry = kubeconfig.KubeconfigEntry(
            context=context, server=server, ca_pem=str(ca).encode(), tls_server_name=server_name,
            user=_kube_user(args, config.path, server_name if config.auth.pop else None), proxy_url=proxy_url)
        if kube_path is None:
            doc = kubeconfig.load(Path(os.devnull))
            kubeconfig.merge(doc, entry)
            sys.stdout.write(kubeconfig.dump(doc))
            sys.stdout.flush()
            where = "printed on stdout"
        else:
            doc = kubeconfig.load(kube_path)
            previous = kubeconfig.merge(doc, entry)
            kubeconfig.write_atomic(kube_path, doc)
            merged = True
            where = f"in {_display(kube_path)}"
        await listener.serve()
        out = sys.stderr if kube_path is None else sys.stdout
        print(f"Proxy for cluster {cluster_id} on https://127.0.0.1:{listener.port} \u2014 "
              f"kubeconfig context '{context}' {where}. Ctrl-C to stop.", file=out, flush=True)

        ready = True
        await stop.wait()
        log.info("stopping: signal received")
        return 0
    except asyncio.CancelledError:
        if stopped_by:  # interrupted during start-up: not an error to report
            return INTERRUPTED if stopped_by[0] == signal.SIGINT else TERMINATED
        raise
    finally:
        await listener.close()
        await keeper.close()
        context_note = _restore_context(kube_path, context, previous) if merged else ""
        if ready:
            out = sys.stderr if kube_path is None else sys.stdout
            print(f"Proxy for cluster {cluster_id} stopped{context_note}.", file=out, flush=True)


def _restore_context(kube_path: Path | None, context: str, previous: str | None) -> str:
    """Put current-context back (see NOTES); returns what happened, for the stop line."""
    if kube_path is None:
        return ""
    try:
        changed = kubeconfig.restore_current_context(kube_path, context, previous)
    except OSError as err:
        log.warning("could not restore current-context in %s: %s", kube_path, err.strerror)
        return f"; current-context in {_display(kube_path)} could not be restored ({err.strerror})"
    if not changed:
        return f"; current-context in {_display(kube_path)} left as it is (no longer '{context}')"
    if previous:
        return f"; current-context in {_display(kube_path)} is '{previous}' again"
    return f"; current-context in {_display(kube_path)} unset again"


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port: choose one in 0-65535")
    if args.ca_fingerprint:
        parse_fingerprint(args.ca_fingerprint)
    tune_allocator()  # bulk frames: see tunnel/aio_alloc.py
    return asyncio.run(_run(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arc-proxy``."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    configure_logging(level, args.log_format)
    return run_cli(PROG, lambda: _serve(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
