"""kube-aad-proxy: the in-cluster end of kubectl's TLS.

It parses only request heads, removes client ``Impersonate-*`` headers,
turns trusted OIDC bearer tokens into the agent's own credentials plus
impersonation, passes every other credential through, and relays bodies,
responses and upgraded streams (exec, attach, port-forward) byte for byte.
"""

from __future__ import annotations

from agent.kube_aad_proxy.config import KubeAadProxyConfig
from agent.kube_aad_proxy.proxy import KubeAadProxy

__all__ = ["KubeAadProxy", "KubeAadProxyConfig"]
