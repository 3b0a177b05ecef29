"""``arc-agent [--config FILE] [--debug]``: run kube-aad-proxy and the connector.

By default one process runs both: kube-aad-proxy on ``kube_aad_proxy.listen``
(``127.0.0.1:0``) and the connector piping each relay stream to it. With
``forward_to: host:port`` in the config no proxy is started and streams go to
that TCP address (benchmarks of the raw path). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from typing import Any

from agent.config import AgentConfig, AgentConfigError, load_agent_config
from agent.connector import Connector, ConnectorConfig
from agent.connector_metadata import api_server_metadata, static_metadata
from agent.health import agent_health_listener
from certs import IssuedCertificate
from logfmt import add_log_format_argument, configure_logging
from tunnel import TunnelConfig
from tunnel.aio_alloc import tune_allocator
from tunnel.aio_config import adapter_limits

log = logging.getLogger("agent")

# Where the deployed agent's ConfigMap/Secret are mounted.
DEFAULT_CONFIG = "/etc/cluster-connect/agent.yaml"

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def split_chain(chain_pem: bytes) -> tuple[bytes, bytes]:
    """(leaf, rest) of a PEM chain: the first certificate and the CAs after it."""
    certs = _PEM_CERT.findall(chain_pem)
    if not certs:
        raise AgentConfigError("kube_aad_proxy.serving_cert_file holds no PEM certificate")
    return certs[0], b"".join(certs[1:])


def _start_kube_aad_proxy(config: AgentConfig) -> Any:
    """A ``KubeAadProxy`` configured from the same file (not started)."""
    from agent import KubeAadProxy, KubeAadProxyConfig
    from agent.kube_aad_proxy.names import NamePrefixes
    from identity import TokenValidator, TrustedIssuer

    kap = config.kube_aad_proxy
    leaf, ca = split_chain(kap.serving_cert_pem)
    validator = None
    if kap.issuers:
        validator = TokenValidator([
            TrustedIssuer(issuer=i.issuer, audiences=list(i.audiences), ca_pem=i.ca_pem,
                          tenant_ids=list(i.tenant_ids) if i.tenant_ids else None)
            for i in kap.issuers
        ], group_resolver=kap.group_source.build() if kap.group_source else None)
    try:
        proxy_config = KubeAadProxyConfig(
            upstream_url=kap.upstream_url,
            upstream_ca_pem=kap.upstream_ca_pem,
            serving_cert=IssuedCertificate(leaf, kap.serving_key_pem, ca),
            upstream_token=kap.upstream_token,
            validator=validator,
            impersonate_with=kap.impersonate_with,  # type: ignore[arg-type]
            cluster_name=config.cluster_id,
            name_prefixes={i.issuer: NamePrefixes(i.username_prefix, i.groups_prefix)
                           for i in kap.issuers},
            **kap.limits,
        )
    except ValueError as exc:
        raise AgentConfigError(f"kube_aad_proxy: {exc}") from None
    return KubeAadProxy(proxy_config)


async def run_agent(config: AgentConfig, stop: asyncio.Event) -> None:
    """Run the agent until ``stop`` is set.

    Raises:
        AgentConfigError: kube-aad-proxy cannot be configured or cannot listen.
    """
    proxy = None
    if config.forward_to is not None:
        upstream = config.forward_to
        metadata = static_metadata()
    else:
        proxy = _start_kube_aad_proxy(config)
        kap = config.kube_aad_proxy
        try:
            await proxy.start(host=kap.listen_host, port=kap.listen_port)
        except OSError as exc:
            raise AgentConfigError(
                f"kube-aad-proxy cannot listen on {kap.listen_host}:{kap.listen_port}: {exc.strerror}"
            ) from None
        upstream = (kap.listen_host, proxy.port)
        metadata = api_server_metadata(kap.upstream_url, kap.upstream_ca_pem, kap.upstream_token)
        log.info("kube-aad-proxy listening on %s:%d", kap.listen_host, proxy.port)
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
    ), metadata=metadata)
    task = asyncio.ensure_future(connector.run())
    health = agent_health_listener(connector, proxy, config.health_limits, dial_loop=task)
    try:
        await health.start(config.health_host, config.health_port)
    except OSError as exc:
        await connector.stop()
        await task
        if proxy is not None:
            await proxy.stop()
        raise AgentConfigError(
            f"cannot listen on health.listen {config.health_host}:{config.health_port}: {exc.strerror}; "
            "pick a free port in 'health.listen'"
        ) from None
    try:
        await stop.wait()
    finally:
        await connector.stop()
        await task
        if proxy is not None:
            await proxy.stop()
        await health.stop()


async def _main(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_agent(config, stop)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``arc-agent``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="arc-agent", description="Run the cluster-connect agent.")
    parser.add_argument("--config", metavar="FILE", default=DEFAULT_CONFIG,
                        help=f"agent config (YAML); default {DEFAULT_CONFIG}")
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    add_log_format_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.debug else logging.INFO, args.log_format)
    try:
        config = load_agent_config(args.config)
        tune_allocator()  # bulk frames: see tunnel/aio_alloc.py
        asyncio.run(_main(config))
    except AgentConfigError as exc:
        if args.debug:
            raise
        print(f"arc-agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the operator; --debug shows the traceback
        if args.debug:
            raise
        print(f"arc-agent: unexpected error: {type(exc).__name__}: {exc} (rerun with --debug)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
