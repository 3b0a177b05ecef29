"""What ``arcctl demo`` creates inside the sandbox API server: RBAC for the demo
user, the agent's ServiceAccount (impersonation rights) and its token, and a
few namespaces and pods so ``kubectl get pods -A`` shows something, whose
port 8080 forwards to the demo's web responder (``demo.web``).

Plain HTTPS with the sandbox admin token (urllib): this runs once, before the
tunnel exists, so it is deliberately simple and synchronous.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from cmdline.errors import CliError
from sandbox.runtime import PORTFORWARD_ANNOTATION_PREFIX

__all__ = ["AGENT_NAMESPACE", "AGENT_SERVICE_ACCOUNT", "DEMO_PODS", "POD_PORT", "SandboxAdmin", "seed_demo"]

AGENT_NAMESPACE = "cluster-connect"
AGENT_SERVICE_ACCOUNT = "arc-agent"
AGENT_TOKEN_SECONDS = 7 * 24 * 3600

DEMO_PODS = [
    ("demo", "web-7d9f8b6c5-abcde", "nginx:1.27", {"app": "web"}),
    ("demo", "web-7d9f8b6c5-fghij", "nginx:1.27", {"app": "web"}),
    ("demo", "api-0", "ghcr.io/example/api:1.4", {"app": "api"}),
    ("kube-system", "coredns-5d78c9869d-x2x9q", "registry.k8s.io/coredns/coredns:v1.11.1",
     {"k8s-app": "kube-dns"}),
]


class SandboxAdmin:
    """Minimal admin client for the sandbox API server."""

    def __init__(self, url: str, ca_pem: bytes, token: str) -> None:
        self.url = url.rstrip("/")
        self._ctx = ssl.create_default_context(cadata=ca_pem.decode())
        self._token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             *, ok_conflict: bool = True) -> dict[str, Any]:
        """One JSON request; a 409 AlreadyExists counts as success when ``ok_conflict``."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=15) as resp:
                return dict(json.loads(resp.read() or b"{}"))
        except urllib.error.HTTPError as err:
            if err.code == 409 and ok_conflict:
                return {}
            detail = err.read()[:200].decode(errors="replace")
            raise CliError(f"sandbox API server answered {err.code} to {method} {path}: "
                           f"{detail}") from None
        except (urllib.error.URLError, OSError) as err:
            raise CliError(f"cannot reach the sandbox API server at {self.url}: {err}") from None

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", path, obj)


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


# The pods' declared port; port-forward to it reaches the web responder.
POD_PORT = 8080


def _pod(ns: str, name: str, image: str, labels: dict[str, str],
         web_address: str | None) -> dict[str, Any]:
    # A sandbox pod runs no process: this annotation tells the API server where
    # a port-forward to POD_PORT goes (a loopback host:port).
    annotations = {f"{PORTFORWARD_ANNOTATION_PREFIX}{POD_PORT}": web_address} if web_address else {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": name.split("-")[0], "image": image,
                                 "ports": [{"containerPort": POD_PORT}]}]},
    }


def seed_demo(admin: SandboxAdmin, *, demo_user_oid: str, web_address: str | None = None) -> str:
    """Create the demo's objects.

    Args:
        admin: client with the sandbox admin token.
        demo_user_oid: the demo user's object id; kube-aad-proxy impersonates it.
        web_address: ``127.0.0.1:PORT`` that port-forwards to the demo pods'
            port 8080 reach (``demo.web``); None = none (port-forward is refused).

    Returns:
        A token of the agent's ServiceAccount (may impersonate users and groups).
    """
    for ns in ("demo", AGENT_NAMESPACE):
        admin.create("/api/v1/namespaces", _namespace(ns))
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    admin.create(f"{rbac}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "arc-demo-user-cluster-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": demo_user_oid}],
    })
    admin.create(f"/api/v1/namespaces/{AGENT_NAMESPACE}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": AGENT_SERVICE_ACCOUNT, "namespace": AGENT_NAMESPACE}})
    admin.create(f"{rbac}/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "arc-agent"},
        "rules": [
            {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"],
             "verbs": ["impersonate"]},
            {"apiGroups": ["authentication.k8s.io"],
             "resources": ["userextras/oid", "userextras/tid", "uids"], "verbs": ["impersonate"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
            {"nonResourceURLs": ["/version", "/api", "/apis"], "verbs": ["get"]},
            # Central Kubernetes roles (agent/central_rbac.py): the agent keeps its
            # owned ClusterRoles and bindings; granting what it binds needs
            # bind/escalate on a real API server.
            {"apiGroups": ["rbac.authorization.k8s.io"],
             "resources": ["clusterroles", "clusterrolebindings", "rolebindings"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "bind", "escalate"]},
        ],
    })
    admin.create(f"{rbac}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "arc-agent"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "arc-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": AGENT_SERVICE_ACCOUNT,
                      "namespace": AGENT_NAMESPACE}],
    })
    for ns, name, image, labels in DEMO_PODS:
        admin.create(f"/api/v1/namespaces/{ns}/pods", _pod(ns, name, image, labels, web_address))
    resp = admin.call(
        "POST",
        f"/api/v1/namespaces/{AGENT_NAMESPACE}/serviceaccounts/{AGENT_SERVICE_ACCOUNT}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": AGENT_TOKEN_SECONDS}}, ok_conflict=False)
    token = (resp.get("status") or {}).get("token")
    if not token:
        raise CliError("the sandbox API server returned no ServiceAccount token for the agent")
    return str(token)
