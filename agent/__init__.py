"""agent package: arc-agent's connector and kube-aad-proxy."""

from __future__ import annotations

from agent.kube_aad_proxy import KubeAadProxy, KubeAadProxyConfig

__all__ = [
    "KubeAadProxy",
    "KubeAadProxyConfig",
]
