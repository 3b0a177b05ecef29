"""How the agent reaches the relay: URL, TLS trust, outbound proxy, backoff,
and the relay's ``Retry-After`` when its admission is full.

Proxy: ``proxy.https`` from the config wins; otherwise the standard
``HTTPS_PROXY`` / ``https_proxy`` (then ``WSS_PROXY``) environment. ``NO_PROXY``
(config ``proxy.no_proxy`` or the environment) exempts hosts. aiohttp's own
``trust_env`` looks up a proxy by URL scheme, i.e. ``WSS_PROXY`` for ``wss://``,
which nobody sets, so the lookup is done here.
"""

from __future__ import annotations

import ipaddress
import os
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from certs import client_ssl_context


def agent_connect_url(relay_url: str) -> str:
    """``wss://host[:port][/prefix]/agent/v1/connect`` for a relay base URL."""
    parts = urlsplit(relay_url.rstrip("/"))
    return f"wss://{parts.netloc}{parts.path}/agent/v1/connect"


def agent_audience(relay_url: str) -> str:
    """The ``aud`` of the agent's assertion: the https form of the endpoint URL."""
    parts = urlsplit(relay_url.rstrip("/"))
    return f"https://{parts.netloc}{parts.path}/agent/v1/connect"


def relay_ssl_context(relay_ca_pem: bytes | None, proxy_ca_pem: bytes | None) -> ssl.SSLContext:
    """Trust the relay's CA (else the system store) plus a TLS-inspecting
    proxy's CA when one is configured."""
    bundle = b"\n".join(p.strip() for p in (relay_ca_pem, proxy_ca_pem) if p)
    return client_ssl_context(bundle + b"\n" if bundle else None)


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


# A Retry-After hint longer than this is treated as this (seconds): a relay
# (or a proxy in front of it) must not park agents for hours.
RETRY_AFTER_CAP = 60.0


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The ``Retry-After`` delta-seconds of a refusal (capped at
    ``RETRY_AFTER_CAP``), or None when absent or not a number (the HTTP-date
    form is not used by the relay and is ignored)."""
    value = (headers or {}).get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, RETRY_AFTER_CAP)


# Spread added to a Retry-After hint, at most (seconds). The relay staggers
# its hints itself (each refused agent gets its own slot, relay/admission.py),
# and hints are whole seconds: one second of jitter spreads the agents given
# the same hint over that second. Spreading over one more hint instead made
# 5,000 agents after a relay restart take twice as long as the relay needed.
RETRY_AFTER_JITTER = 1.0


def retry_after_delay(hint: float) -> float:
    """When to redial after a ``Retry-After: hint``: not before the hint, and
    within ``RETRY_AFTER_JITTER`` (or the hint, if shorter) after it:
    uniform in ``[hint, hint + min(hint, RETRY_AFTER_JITTER)]``."""
    return hint + random.uniform(0.0, min(hint, RETRY_AFTER_JITTER))


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the ceiling is ``initial``
    doubling up to ``cap``, each delay is drawn uniformly in [0, ceiling]
    (``random.uniform(0, min(cap, initial * 2**n))``) so a fleet that lost
    its relay at the same instant does not redial in waves."""

    initial: float = 0.1
    cap: float = 2.0
    attempt: int = 0

    def ceiling(self, cap: float | None = None) -> float:
        """The upper bound of the next delay."""
        limit = self.cap if cap is None else cap
        return min(limit, self.initial * float(2 ** min(self.attempt, 30)))

    def next_delay(self, cap: float | None = None) -> float:
        """The delay before the next attempt (advances the sequence); ``cap``
        overrides the configured cap for this one delay."""
        delay = self.ceiling(cap)
        self.attempt += 1
        return random.uniform(0.0, delay)

    def reset(self) -> None:
        """Start again from ``initial`` (after a stable connection)."""
        self.attempt = 0
