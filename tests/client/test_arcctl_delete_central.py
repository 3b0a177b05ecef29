"""``arcctl delete`` removes the agent's central-RBAC objects (issue 18):
the objects the real reconciler made in the sandbox API server are deleted by
the delete step in the cluster (client/arcctl_delete.py, real KubeTarget);
an unlabelled ClusterRole and RoleBinding stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.central_rbac_objects import OWNED_LABEL, OWNED_VALUE, Assignment, desired_objects
from agent.central_rbac_reconcile import Reconciler
from client.arcctl_delete import CENTRAL_OWNED_SELECTOR, remove_in_cluster
from client.kube_apply import KubeTarget

try:
    from sandbox import SandboxApiServer
except ImportError:  # until sandbox/__init__.py re-exports it
    from sandbox.apiserver.server import SandboxApiServer

RBAC = "/apis/rbac.authorization.k8s.io/v1"
CID = "rg1/alpha"


def test_central_owned_selector_is_the_agents_label() -> None:
    assert CENTRAL_OWNED_SELECTOR == f"{OWNED_LABEL}={OWNED_VALUE}"


def _owned(target: KubeTarget) -> int:
    return sum(len((target.request("GET", f"{RBAC}/{p}?labelSelector={OWNED_LABEL}%3D{OWNED_VALUE}") or {})
                   .get("items") or []) for p in ("clusterroles", "clusterrolebindings", "rolebindings"))


async def test_arcctl_delete_removes_the_agents_central_rbac_objects(tmp_path: Path) -> None:
    async with SandboxApiServer(tmp_path / "api") as api:
        target = KubeTarget(str(api.admin_kubeconfig_path))
        try:
            await asyncio.to_thread(target.request, "POST", "/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}})
            desired = desired_objects([Assignment("1", "u1", "User", "kubernetes-viewer", None),
                                       Assignment("2", "g1", "Group", "kubernetes-writer", "payments")])
            assert await Reconciler(api.url, api.ca_pem, api.admin_token).apply(desired)
            mine_role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                         "metadata": {"name": "hand-made"}, "rules": []}
            mine_binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                            "metadata": {"name": "hand-made", "namespace": "payments"},
                            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                        "name": "hand-made"},
                            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                          "name": "arc-central:user:u1"}]}
            await asyncio.to_thread(target.request, "POST", f"{RBAC}/clusterroles", mine_role)
            await asyncio.to_thread(target.request, "POST", f"{RBAC}/namespaces/payments/rolebindings", mine_binding)
            assert await asyncio.to_thread(_owned, target) == len(desired) == 6

            lines = await asyncio.to_thread(remove_in_cluster, target, CID, "https://relay.example")

            assert "central RBAC objects: 6 deleted" in lines, lines
            assert await asyncio.to_thread(_owned, target) == 0
            for path in ("clusterroles/hand-made", "namespaces/payments/rolebindings/hand-made"):
                assert await asyncio.to_thread(target.request, "GET", f"{RBAC}/{path}") is not None, path
            again = await asyncio.to_thread(remove_in_cluster, target, CID, "https://relay.example")
            assert not any(line.startswith("central RBAC") for line in again), again
        finally:
            target.close()
