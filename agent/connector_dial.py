"""How the agent reaches the relay: URL, TLS trust, outbound proxy, backoff,
the relay's ``Retry-After`` when its admission is full, and which dial
failures may be retried fast.

Proxy: ``proxy.https`` from the config wins; otherwise the standard
``HTTPS_PROXY`` / ``https_proxy`` (then ``WSS_PROXY``) environment. ``NO_PROXY``
(config ``proxy.no_proxy`` or the environment) exempts hosts. aiohttp's own
``trust_env`` looks up a proxy by URL scheme, i.e. ``WSS_PROXY`` for ``wss://``,
which nobody sets, so the lookup is done here.

The websocket itself: ``dial_relay`` opens it on the transport the tunnel
config names (``tunnel.transport``: aiohttp, or the native one), with the same
proxy, TLS trust and headers either way.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from urllib.parse import urlsplit

import aiohttp

from certs import client_ssl_context
from identity.agent_assertion import AGENT_CONNECT_PATH
from identity.agent_assertion import agent_audience as agent_audience
from tunnel import TunnelConfig, open_tunnel_websocket


def agent_connect_url(relay_url: str) -> str:
    """``wss://host[:port][/prefix]/agent/v1/connect`` for a relay base URL."""
    parts = urlsplit(relay_url.rstrip("/"))
    return f"wss://{parts.netloc}{parts.path}{AGENT_CONNECT_PATH}"


def relay_ssl_context(relay_ca_pem: bytes | None, proxy_ca_pem: bytes | None) -> ssl.SSLContext:
    """Trust the relay's CA (else the system store) plus a TLS-inspecting
    proxy's CA when one is configured."""
    bundle = b"\n".join(p.strip() for p in (relay_ca_pem, proxy_ca_pem) if p)
    return client_ssl_context(bundle + b"\n" if bundle else None)


def relay_not_listening(exc: BaseException) -> bool:
    """Whether a failed dial found nothing listening (TCP connection refused):
    the relay (or the proxy) is restarting, and a refused connect costs it
    nothing, so redialling fast is cheap. Any other failure (reset or closed
    during TLS: a relay up but shedding connections at accept; a timeout) is
    not: each redial costs the relay an accept or a handshake."""
    if isinstance(exc, ConnectionRefusedError):  # the native transport's dial
        return True
    return isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError)


async def dial_relay(http: aiohttp.ClientSession, url: str, token: str, proxy: str | None,
                     tunnel: TunnelConfig, relay_ca_pem: bytes | None,
                     proxy_ca_pem: bytes | None) -> object:
    """The agent's websocket to the relay (hand it to ``TunnelSession``).

    Raises:
        aiohttp.WSServerHandshakeError: The relay refused the upgrade.
        aiohttp.ClientError, OSError, ssl.SSLError: The dial failed.
    """
    # aiohttp's connector already holds the trust; the native dial needs it here.
    context = relay_ssl_context(relay_ca_pem, proxy_ca_pem) if tunnel.transport == "native" else None
    return await open_tunnel_websocket(http, url, headers={"Authorization": f"Bearer {token}"},
                                       ssl_context=context, proxy=proxy, config=tunnel)


def _bypassed(host: str, no_proxy: str) -> bool:
    """``NO_PROXY`` semantics: ``*``, exact host, ``.suffix``/``suffix`` domain,
    or an IP in a listed CIDR."""
    host = host.strip("[]").lower()
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.split(":")[0] if entry.count(":") == 1 else entry
        domain = entry.lstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False


def resolve_proxy(relay_url: str, https: str | None = None, http: str | None = None,
                  no_proxy: str | None = None) -> str | None:
    """The proxy URL for dialling ``relay_url``, or None for a direct connection."""
    host = urlsplit(relay_url).hostname or ""
    env = os.environ
    exempt = no_proxy if no_proxy is not None else (env.get("NO_PROXY") or env.get("no_proxy") or "")
    if exempt and _bypassed(host, exempt):
        return None
    proxy = https or http or env.get("HTTPS_PROXY") or env.get("https_proxy") or env.get("WSS_PROXY") \
        or env.get("wss_proxy")
    return proxy or None


