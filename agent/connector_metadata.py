"""Cluster metadata the agent reports to the relay.

``kubernetesVersion`` from the API server's ``/version``, ``totalNodeCount``
and ``totalCoreCount`` from ``/api/v1/nodes`` (sum of ``status.capacity.cpu``),
read with the agent's own credentials. Any failure leaves the field out: the
metadata is informative, never a reason to stop tunnelling.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from certs import client_ssl_context

log = logging.getLogger("agent")

AGENT_VERSION = "0.1.0"
# The API server answers /version and a node list quickly; a slow answer must
# not hold up the connect path that reports metadata.
METADATA_TIMEOUT = 10.0
# Node lists of huge clusters are paged; one page this size is plenty for a count
# up to it, and continue tokens take care of the rest.
NODE_PAGE = 500

MetadataSource = Callable[[], Awaitable[dict[str, Any]]]


def parse_cpu(quantity: str) -> float:
    """A Kubernetes CPU quantity (``"4"``, ``"3500m"``, ``"1k"``) in cores."""
    q = str(quantity).strip()
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    try:
        if q and q[-1] in suffixes:
            return float(q[:-1]) * suffixes[q[-1]]
        return float(q)
    except ValueError:
        return 0.0


def api_server_metadata(
    upstream_url: str, ca_pem: bytes | None, token: str | None, *, agent_version: str = AGENT_VERSION
) -> MetadataSource:
    """A ``MetadataSource`` that asks the API server at ``upstream_url``."""
    base = upstream_url.rstrip("/")

    async def collect() -> dict[str, Any]:
        result: dict[str, Any] = {"agentVersion": agent_version}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT)
        ssl_ctx = client_ssl_context(ca_pem or None)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            try:
                async with http.get(f"{base}/version", ssl=ssl_ctx) as resp:
                    if resp.status == 200:
                        result["kubernetesVersion"] = str((await resp.json()).get("gitVersion", ""))
                    else:
                        log.info("metadata /version status=%d", resp.status)
                nodes, cores, cont = 0, 0.0, ""
                for _ in range(1000):  # bounded paging
                    params = {"limit": str(NODE_PAGE)}
                    if cont:
                        params["continue"] = cont
                    async with http.get(f"{base}/api/v1/nodes", params=params, ssl=ssl_ctx) as resp:
                        if resp.status != 200:
                            log.info("metadata /api/v1/nodes status=%d", resp.status)
                            return result
                        page = await resp.json()
                    for node in page.get("items") or []:
                        nodes += 1
                        cores += parse_cpu(((node.get("status") or {}).get("capacity") or {}).get("cpu", "0"))
                    cont = (page.get("metadata") or {}).get("continue") or ""
                    if not cont:
                        break
                result["totalNodeCount"] = nodes
                result["totalCoreCount"] = math.floor(cores)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.info("metadata unavailable reason=%r", type(exc).__name__)
        return result

    return collect


def static_metadata(agent_version: str = AGENT_VERSION) -> MetadataSource:
    """A ``MetadataSource`` reporting only the agent version (``forward_to`` mode)."""

    async def collect() -> dict[str, Any]:
        return {"agentVersion": agent_version}

    return collect
