"""``arc-agent``: run kube-aad-proxy and the connector until SIGTERM/SIGINT.

By default one process runs both: kube-aad-proxy on ``kube_aad_proxy.listen``
(``127.0.0.1:0``) and the connector piping each relay stream to it. With
``forward_to: host:port`` in the config no proxy is started and streams go to
that TCP address (benchmarks of the raw path).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import re
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.central_rbac import CentralRbac
from agent.central_rbac_reconcile import Reconciler
from agent.config import AgentConfig, AgentConfigError, load_agent_config
from agent.connector import Connector, ConnectorConfig
from agent.connector_metadata import api_server_metadata, static_metadata
from agent.health import agent_health_listener
from certs import IssuedCertificate
from cmdline import (
    CommandParser,
    ConfigError,
    PortInUse,
    add_version_argument,
    help_epilog,
    run_cli,
)
from logfmt import add_log_format_argument, configure_logging
from tunnel import CENTRAL_RBAC_TARGET, TunnelConfig
from tunnel.aio import adapter_limits, tune_allocator

if TYPE_CHECKING:
    from agent import KubeAadProxy
    from agent.kube_aad_proxy.names import NamePrefixes
    from health import HealthListener
    from identity import TokenValidator

__all__ = ["build_parser", "main", "run_agent", "split_chain"]

log = logging.getLogger("agent")

PROG = "arc-agent"

# Where the deployed agent's ConfigMap/Secret are mounted.
DEFAULT_CONFIG = "/etc/cluster-connect/agent.yaml"

DESCRIPTION = """\
Run the cluster-connect agent inside a cluster: it dials out to the relay
(no inbound port), and pipes every stream the relay sends to kube-aad-proxy,
which it runs in the same process. kube-aad-proxy ends kubectl's TLS, checks
the user's token and calls the API server impersonating that user.
SIGTERM or Ctrl-C stops both (exit 0); SIGHUP re-reads the config file and
applies kube_aad_proxy.oidc (trusted issuers, prefixes) without dropping a connection.

'arcctl connect' or the Helm chart in deploy/ runs it in the cluster with its
config; run it by hand to try a config out."""

EXAMPLES = (
    "# as deployed by 'arcctl connect' (the config is mounted from a ConfigMap)",
    f"arc-agent --config {DEFAULT_CONFIG}",
    "# by hand, with JSON logs",
    "arc-agent --config agent.yaml --log-format json",
)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def split_chain(chain_pem: bytes) -> tuple[bytes, bytes]:
    """(leaf, rest) of a PEM chain: the first certificate and the CAs after it.

    Raises:
        ConfigError: no certificate in ``chain_pem``.
    """
    certs = _PEM_CERT.findall(chain_pem)
    if not certs:
        raise ConfigError("kube_aad_proxy.serving_cert_file holds no PEM certificate: "
                          "point it at the PEM file of kube-aad-proxy's serving certificate")
    return certs[0], b"".join(certs[1:])


def _token_validator(config: AgentConfig) -> TokenValidator | None:
    """The validator of the configured issuers' tokens, or None without issuers.
    Whoever calls this closes it: it keeps HTTP sessions to the issuers."""
    from identity import TokenValidator, TrustedIssuer

    kap = config.kube_aad_proxy
    if not kap.issuers:
        return None
    return TokenValidator([
        TrustedIssuer(issuer=i.issuer, audiences=list(i.audiences), ca_pem=i.ca_pem,
                      tenant_ids=list(i.tenant_ids) if i.tenant_ids else None)
        for i in kap.issuers
    ], group_resolver=kap.group_source.build() if kap.group_source else None, **kap.validator_options)


def _kube_aad_proxy(config: AgentConfig, validator: TokenValidator | None) -> KubeAadProxy:
    """A ``KubeAadProxy`` configured from the same file (not started).

    Raises:
        ConfigError: a value kube-aad-proxy refuses.
    """
    from agent import KubeAadProxy, KubeAadProxyConfig

    kap = config.kube_aad_proxy
    leaf, ca = split_chain(kap.serving_cert_pem)
    try:
        proxy_config = KubeAadProxyConfig(
            upstream_url=kap.upstream_url,
            upstream_ca_pem=kap.upstream_ca_pem,
            serving_cert=IssuedCertificate(leaf, kap.serving_key_pem, ca),
            upstream_token=kap.upstream_token,
            validator=validator,
            impersonate_with=kap.impersonate_with,  # type: ignore[arg-type]
            cluster_name=config.cluster_id,
            name_prefixes=_name_prefixes(config),
            **kap.limits,
            **kap.pop,
        )
    except ValueError as exc:
        raise ConfigError(f"kube_aad_proxy: {exc}") from None
    return KubeAadProxy(proxy_config)


def _central_rbac(config: AgentConfig, proxy: KubeAadProxy) -> CentralRbac:
    """Central Kubernetes roles: the relay's lists reconciled into the cluster
    with the agent's credentials, their groups added by ``proxy``."""
    kap = config.kube_aad_proxy
    central = CentralRbac(config.cluster_id, Reconciler(kap.upstream_url, kap.upstream_ca_pem, kap.upstream_token),
                          max_staleness=config.central_rbac_max_staleness)
    proxy.policy.use_central(central)  # names its groups with the proxy's issuer prefixes
    return central


async def _start_kube_aad_proxy(config: AgentConfig, proxy: KubeAadProxy) -> tuple[str, int]:
    """Start ``proxy`` on ``kube_aad_proxy.listen``; returns where it listens.

    Raises:
        PortInUse: the port is taken.
        ConfigError: any other reason it cannot listen there.
    """
    kap = config.kube_aad_proxy
    try:
        await proxy.start(host=kap.listen_host, port=kap.listen_port)
    except OSError as exc:
        where = f"{kap.listen_host}:{kap.listen_port}"
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"kube-aad-proxy cannot listen on {where}: the port is in use; "
                            "choose another in kube_aad_proxy.listen") from None
        raise ConfigError(f"kube-aad-proxy cannot listen on {where}: {exc.strerror}; "
                          "fix kube_aad_proxy.listen") from None
    log.info("kube-aad-proxy listening on %s:%d", kap.listen_host, proxy.port)
    return kap.listen_host, proxy.port


async def _start_health(config: AgentConfig, health: HealthListener) -> None:
    """Start the ``/livez`` ``/readyz`` ``/metrics`` listener on ``health.listen``.

    Raises:
        PortInUse: the port is taken.
        ConfigError: any other reason it cannot listen there.
    """
    where = f"{config.health_host}:{config.health_port}"
    try:
        await health.start(config.health_host, config.health_port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"cannot listen on health.listen {where}: the port is in use; "
                            "pick a free port in 'health.listen'") from None
        raise ConfigError(f"cannot listen on health.listen {where}: {exc.strerror}; "
                          "fix 'health.listen'") from None


def _name_prefixes(config: AgentConfig) -> dict[str, NamePrefixes]:
    from agent.kube_aad_proxy.names import NamePrefixes

    return {i.issuer: NamePrefixes(i.username_prefix, i.groups_prefix) for i in config.kube_aad_proxy.issuers}


@dataclass
class _Identity:
    """The validator kube-aad-proxy uses now (a reload replaces it; the agent closes the last one)."""

    validator: TokenValidator | None


async def _reload(path: str, proxy: KubeAadProxy, identity: _Identity) -> None:
    """SIGHUP: read the config file again and apply kube_aad_proxy.oidc (issuers,
    prefixes, validation keys) without dropping a connection; a bad file
    changes nothing and says why in one line."""
    try:
        new = load_agent_config(path)
        validator = _token_validator(new)
        try:
            proxy.reload_identity(validator, _name_prefixes(new))
        except ValueError as exc:
            if validator is not None:
                await validator.close()
            raise AgentConfigError(f"kube_aad_proxy: {exc}") from None
    except (AgentConfigError, ConfigError) as exc:
        log.error("configuration reload refused, the previous configuration stays in force: %s",
                  str(exc).replace("\n", "; "))
        return
    old, identity.validator = identity.validator, validator
    if old is not None:
        await old.close()
    log.info("issuer configuration reloaded issuers=%d", len(new.kube_aad_proxy.issuers))


async def run_agent(config: AgentConfig, stop: asyncio.Event, config_path: str | None = None) -> None:
    """Run the agent until ``stop`` is set, then stop it and close everything
    it opened (the connector, kube-aad-proxy, the token validator's sessions).
    With ``config_path``, SIGHUP re-reads it and applies its issuers.

    Raises:
        ConfigError: kube-aad-proxy cannot be configured or cannot listen.
        PortInUse: kube-aad-proxy's port is taken.
    """
    proxy: KubeAadProxy | None = None
    identity = _Identity(None)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()
    central: CentralRbac | None = None
    try:
        if config.forward_to is not None:
            upstream = config.forward_to
            metadata = static_metadata()
        else:
            identity.validator = _token_validator(config)
            proxy = _kube_aad_proxy(config, identity.validator)
            upstream = await _start_kube_aad_proxy(config, proxy)
            if config_path is not None:
                def hangup(proxy: KubeAadProxy = proxy) -> None:
                    task = asyncio.ensure_future(_reload(config_path, proxy, identity))
                    reloads.add(task)
                    task.add_done_callback(reloads.discard)
                loop.add_signal_handler(signal.SIGHUP, hangup)
            kap = config.kube_aad_proxy
            metadata = api_server_metadata(kap.upstream_url, kap.upstream_ca_pem, kap.upstream_token)
            central = _central_rbac(config, proxy)
        connector = Connector(ConnectorConfig(
            relay_url=config.relay_url,
            cluster_id=config.cluster_id,
            private_key_pem=config.agent_key_pem,
            upstream=upstream,
            relay_ca_pem=config.relay_ca_pem,
            proxy_https=config.proxy_https,
            proxy_http=config.proxy_http,
            no_proxy=config.no_proxy,
            proxy_ca_pem=config.proxy_ca_pem,
            metadata_interval=config.metadata_interval,
            tunnel=TunnelConfig(limits=adapter_limits(max_concurrent_streams=config.max_concurrent_streams)),
        ), metadata=metadata,
            stream_handlers={CENTRAL_RBAC_TARGET: central.on_stream} if central is not None else None)
        task = asyncio.ensure_future(connector.run())
        try:
            health = agent_health_listener(connector, proxy, config.health_limits, dial_loop=task)
            await _start_health(config, health)
            try:
                await stop.wait()
            finally:
                await health.stop()
        finally:
            await connector.stop()
            await task
    finally:
        if config_path is not None and proxy is not None:
            loop.remove_signal_handler(signal.SIGHUP)
        for task in list(reloads):
            await task
        if central is not None:
            await central.close()
        if proxy is not None:
            await proxy.stop()
        if identity.validator is not None:
            # Its JWKS and group-source sessions: left open, asyncio reports
            # "Unclosed client session" at exit.
            await identity.validator.close()


async def _serve(config: AgentConfig, config_path: str | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_agent(config, stop, config_path)


def build_parser() -> CommandParser:
    """The ``arc-agent`` command line."""
    parser = CommandParser(prog=PROG, description=DESCRIPTION, epilog=help_epilog(EXAMPLES))
    parser.add_argument("--config", metavar="FILE", default=DEFAULT_CONFIG,
                        help=f"agent config file (YAML; keys in docs/config.md); default {DEFAULT_CONFIG}")
    parser.add_argument("--debug", action="store_true",
                        help="log at DEBUG and print tracebacks of unexpected errors")
    add_log_format_argument(parser)
    add_version_argument(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_agent_config(args.config)
    except AgentConfigError as exc:
        # agent.config's own type until its loader raises cmdline's ConfigError
        # (issue 13 item 2); then this clause changes nothing.
        raise ConfigError(str(exc)) from None
    tune_allocator()  # bulk frames: see tunnel/aio_alloc.py
    asyncio.run(_serve(config, args.config))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arc-agent``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.debug else logging.INFO, args.log_format)
    return run_cli(PROG, lambda: _run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
