"""The objects a fresh cluster has: namespaces, nodes, and the bootstrap
RBAC roles and bindings (a subset of kube-apiserver's bootstrappolicy)."""

from __future__ import annotations

from typing import Any

from sandbox.apiserver.controllers import node_status
from sandbox.apiserver.resources import lookup
from sandbox.apiserver.store import Store

Obj = dict[str, Any]
_RBAC = "rbac.authorization.k8s.io"
# (name, cpus, memory) of the seeded nodes; the agent reads node and core counts.
NODES = (("sandbox-control-plane", 4, "8Gi"), ("sandbox-worker", 8, "16Gi"), ("sandbox-worker2", 8, "16Gi"))
_READ = ["get", "list", "watch"]
_WRITE = ["create", "delete", "deletecollection", "patch", "update"]
_VIEW_RESOURCES = ["pods", "pods/log", "pods/status", "services", "configmaps", "serviceaccounts", "events",
                   "namespaces", "nodes", "endpoints", "persistentvolumeclaims", "replicationcontrollers"]

CLUSTER_ROLES: dict[str, list[Obj]] = {
    "cluster-admin": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                      {"nonResourceURLs": ["*"], "verbs": ["*"]}],
    "system:discovery": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                              "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
                          "verbs": ["get"]}],
    "system:public-info-viewer": [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
                                   "verbs": ["get"]}],
    "system:basic-user": [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews",
                                                              "selfsubjectrulesreviews"], "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
    ],
    "view": [{"apiGroups": [""], "resources": _VIEW_RESOURCES, "verbs": _READ},
             {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"],
              "verbs": _READ},
             {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": _READ}],
    "edit": [{"apiGroups": [""], "resources": [*_VIEW_RESOURCES, "secrets", "pods/exec", "pods/attach",
                                               "pods/portforward"], "verbs": _READ + _WRITE},
             {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"],
              "verbs": _READ + _WRITE},
             {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}],
}
CLUSTER_ROLES["admin"] = [*CLUSTER_ROLES["edit"],
                          {"apiGroups": [_RBAC], "resources": ["roles", "rolebindings"], "verbs": _READ + _WRITE}]

# (binding name, role name, subjects)
CLUSTER_ROLE_BINDINGS: list[tuple[str, str, list[Obj]]] = [
    ("cluster-admin", "cluster-admin", [{"apiGroup": _RBAC, "kind": "Group", "name": "system:masters"}]),
    ("system:discovery", "system:discovery",
     [{"apiGroup": _RBAC, "kind": "Group", "name": "system:authenticated"}]),
    ("system:public-info-viewer", "system:public-info-viewer",
     [{"apiGroup": _RBAC, "kind": "Group", "name": "system:authenticated"},
      {"apiGroup": _RBAC, "kind": "Group", "name": "system:unauthenticated"}]),
    ("system:basic-user", "system:basic-user",
     [{"apiGroup": _RBAC, "kind": "Group", "name": "system:authenticated"}]),
]


def seed(store: Store, kube_version: str) -> None:
    """Create the bootstrap objects (namespaces also get their default ServiceAccount)."""
    ns_rt, node_rt = lookup("", "v1", "namespaces"), lookup("", "v1", "nodes")
    cr_rt, crb_rt = lookup(_RBAC, "v1", "clusterroles"), lookup(_RBAC, "v1", "clusterrolebindings")
    assert ns_rt and node_rt and cr_rt and crb_rt
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        store.create(ns_rt, {"kind": "Namespace", "apiVersion": "v1",
                             "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                             "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    for i, (name, cpus, mem) in enumerate(NODES):
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        if i == 0:
            labels["node-role.kubernetes.io/control-plane"] = ""
        status = node_status(cpus, mem)
        status["addresses"] = [{"type": "InternalIP", "address": f"192.168.49.{i + 2}"},
                               {"type": "Hostname", "address": name}]
        status["nodeInfo"] = {"kubeletVersion": f"v{kube_version}", "kubeProxyVersion": f"v{kube_version}",
                              "operatingSystem": "linux", "architecture": "amd64",
                              "containerRuntimeVersion": "containerd://1.7.0", "osImage": "Sandbox Linux",
                              "kernelVersion": "6.1.0", "machineID": "", "systemUUID": "", "bootID": ""}
        store.create(node_rt, {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "labels": labels},
                               "spec": {"podCIDR": f"10.244.{i}.0/24"}, "status": status})
    svc_rt = lookup("", "v1", "services")
    assert svc_rt
    # Every cluster has this Service in default (kubectl get all shows it).
    store.create(svc_rt, {"kind": "Service", "apiVersion": "v1",
                          "metadata": {"name": "kubernetes", "namespace": "default",
                                       "labels": {"component": "apiserver", "provider": "kubernetes"}},
                          "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                                   "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                                   "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                                   "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
                          "status": {"loadBalancer": {}}})
    for name, rules in CLUSTER_ROLES.items():
        store.create(cr_rt, {"kind": "ClusterRole", "apiVersion": f"{_RBAC}/v1",
                             "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                             "rules": rules})
    for name, role, subjects in CLUSTER_ROLE_BINDINGS:
        store.create(crb_rt, {"kind": "ClusterRoleBinding", "apiVersion": f"{_RBAC}/v1",
                              "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                              "roleRef": {"apiGroup": _RBAC, "kind": "ClusterRole", "name": role},
                              "subjects": subjects})
