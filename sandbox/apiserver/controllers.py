"""What the control plane does around stored objects: scheduling and
"running" pods, deployment status, default ServiceAccounts, the token
controller for ``kubernetes.io/service-account-token`` Secrets, namespace
cascade deletion, and one ``sandbox.runtime.PodRuntime`` per pod."""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Any

from sandbox.apiserver import deployments
from sandbox.apiserver.resources import RESOURCE_TYPES, ResourceType, lookup
from sandbox.apiserver.store import Store, now_rfc3339

if TYPE_CHECKING:
    from sandbox.apiserver.authn import Authenticator

log = logging.getLogger("sandbox.apiserver")

try:  # built by another package in parallel; the API server works without it
    from sandbox.runtime import PodRuntime
except Exception:  # pragma: no cover - a missing or broken runtime must not break the API server
    logging.getLogger("sandbox.apiserver").warning("event=pod_runtime_unavailable")
    PodRuntime = None  # type: ignore[assignment,misc]

Obj = dict[str, Any]
PODS = lookup("", "v1", "pods")
NODES = lookup("", "v1", "nodes")
SECRETS = lookup("", "v1", "secrets")
SERVICE_ACCOUNTS = lookup("", "v1", "serviceaccounts")
NAMESPACES = lookup("", "v1", "namespaces")
EVENTS = lookup("", "v1", "events")
SA_TOKEN_TYPE = "kubernetes.io/service-account-token"


class Controllers:
    """Synchronous reactions to store changes (called inside the mutation)."""

    def __init__(self, store: Store, authn: Authenticator, ca_pem: bytes) -> None:
        self.store = store
        self.authn = authn
        self.ca_pem = ca_pem
        self.runtimes: dict[tuple[str, str], Any] = {}
        self._next_ip = 10
        self._next_node = 0
        self._next_svc_ip = 10
        self._event_seq = 0
        store.listeners.append(self.on_change)

    # ---- before store --------------------------------------------------------

    def prepare(self, rt: ResourceType, obj: Obj, current: Obj | None = None) -> None:
        """Fill what controllers would fill before the object is first seen."""
        if rt.kind == "Pod":
            self._pod(obj, current)
        elif rt.kind == "Deployment":
            spec = obj.get("spec", {})
            n = int(spec.get("replicas", 1))
            # The store bumps generation after this runs when the spec changed.
            gen = 1
            if current is not None:
                gen = int(current["metadata"].get("generation", 1))
                gen += 1 if obj.get("spec") != current.get("spec") else 0
            obj["status"] = {
                "observedGeneration": gen, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                "availableReplicas": n,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                     "message": "Deployment has minimum availability.", "lastUpdateTime": now_rfc3339(),
                     "lastTransitionTime": now_rfc3339()},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                     "message": "ReplicaSet has successfully progressed.", "lastUpdateTime": now_rfc3339(),
                     "lastTransitionTime": now_rfc3339()},
                ],
            }
            if n == 0:
                for k in ("readyReplicas", "availableReplicas", "updatedReplicas", "replicas"):
                    obj["status"].pop(k)
        elif rt.kind == "Service" and current is None:
            spec = obj.setdefault("spec", {})
            if spec.get("clusterIP") != "None":
                spec.setdefault("clusterIP", f"10.96.0.{self._next_svc_ip}")
                spec["clusterIPs"] = [spec["clusterIP"]]
                self._next_svc_ip = self._next_svc_ip % 250 + 1
            obj["status"] = {"loadBalancer": {}}
        elif rt.kind == "Secret" and obj.get("type") == SA_TOKEN_TYPE:
            self._fill_token_secret(obj)
        elif rt.kind == "Node" and "status" not in obj:
            obj["status"] = node_status(4, "8Gi")

    def _pod(self, obj: Obj, current: Obj | None) -> None:
        spec = obj.setdefault("spec", {})
        if current is not None:
            obj["status"] = current.get("status", obj.get("status", {}))
            spec.setdefault("nodeName", current.get("spec", {}).get("nodeName"))
            return
        host_ip = "192.168.49.2"
        if not spec.get("nodeName") and NODES:
            nodes = [n["metadata"]["name"] for n in self.store.items(NODES)]
            if nodes:
                spec["nodeName"] = nodes[self._next_node % len(nodes)]
                self._next_node += 1
        node = self.store.peek(NODES, "", spec.get("nodeName", "")) if NODES else None
        if node:
            host_ip = next((a["address"] for a in node.get("status", {}).get("addresses", [])
                            if a.get("type") == "InternalIP"), host_ip)
        ip = f"10.244.0.{self._next_ip}"
        self._next_ip = self._next_ip % 250 + 1
        now = now_rfc3339()
        obj["status"] = {
            "phase": "Running",
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
            "qosClass": "BestEffort",
            "containerStatuses": [
                {"name": c.get("name", ""), "state": {"running": {"startedAt": now}}, "lastState": {},
                 "ready": True, "restartCount": 0, "image": c.get("image", ""),
                 "imageID": f"docker.io/library/{c.get('image', '')}@sha256:" + "0" * 64,
                 "containerID": f"containerd://{abs(hash((obj['metadata'].get('name'), c.get('name')))):064x}"[:77],
                 "started": True}
                for c in spec.get("containers") or []
            ],
        }

    def _fill_token_secret(self, obj: Obj) -> None:
        meta = obj.get("metadata", {})
        sa_name = str((meta.get("annotations") or {}).get("kubernetes.io/service-account.name") or "")
        ns = meta.get("namespace", "")
        sa = self.store.peek(SERVICE_ACCOUNTS, ns, sa_name) if (sa_name and SERVICE_ACCOUNTS) else None
        if sa is None:
            return
        meta.setdefault("annotations", {})["kubernetes.io/service-account.uid"] = sa["metadata"]["uid"]
        token = self.authn.mint_legacy(ns, sa_name, sa["metadata"]["uid"], meta["name"])
        data = obj.setdefault("data", {})
        data["token"] = base64.b64encode(token.encode()).decode()
        data["ca.crt"] = base64.b64encode(self.ca_pem).decode()
        data["namespace"] = base64.b64encode(ns.encode()).decode()

    # ---- after store ---------------------------------------------------------

    def on_change(self, kind: str, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        meta = obj.get("metadata", {})
        if rt.kind == "Namespace":
            if kind == "ADDED" and SERVICE_ACCOUNTS:
                self.store.create(SERVICE_ACCOUNTS, {"kind": "ServiceAccount", "apiVersion": "v1",
                                                     "metadata": {"name": "default", "namespace": meta["name"]}})
            elif kind == "DELETED":
                self._delete_namespace_content(meta["name"])
        elif rt.kind == "Pod":
            self._pod_runtime(kind, obj)
            if kind == "ADDED":
                self._pod_events(obj)
        elif rt.kind == "Deployment":
            if kind == "DELETED" or old is None or old.get("spec") != obj.get("spec"):
                deployments.reconcile(self.store, obj, self.prepare, deleted=kind == "DELETED")

    def _pod_events(self, pod: Obj) -> None:
        """The events a kubelet and scheduler would record (kubectl describe/get events)."""
        if EVENTS is None:
            return
        meta = pod["metadata"]
        node = pod.get("spec", {}).get("nodeName", "")
        ref = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
               "apiVersion": "v1", "resourceVersion": meta["resourceVersion"]}
        now = now_rfc3339()
        notes = [("Scheduled", "default-scheduler", f"Successfully assigned {meta['namespace']}/{meta['name']} "
                  f"to {node}")]
        notes += [("Started", "kubelet", f"Started container {c.get('name', '')}")
                  for c in pod.get("spec", {}).get("containers") or []]
        for reason, component, message in notes:
            self._event_seq += 1
            self.store.create(EVENTS, {
                "kind": "Event", "apiVersion": "v1",
                "metadata": {"name": f"{meta['name']}.{self._event_seq:016x}", "namespace": meta["namespace"]},
                "involvedObject": ref, "reason": reason, "message": message, "type": "Normal",
                "source": {"component": component, **({"host": node} if component == "kubelet" else {})},
                "firstTimestamp": now, "lastTimestamp": now, "count": 1, "reportingComponent": component,
                "reportingInstance": node if component == "kubelet" else "",
            })

    def _delete_namespace_content(self, ns: str) -> None:
        for rt in RESOURCE_TYPES:
            if rt.namespaced and not rt.virtual and rt.version == "v1":
                for o in list(self.store.items(rt, ns)):
                    self.store.delete(rt, ns, o["metadata"]["name"])

    def _pod_runtime(self, kind: str, obj: Obj) -> None:
        if PodRuntime is None:
            return
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        try:
            if kind == "ADDED":
                self.runtimes[key] = PodRuntime(obj)
            elif kind == "MODIFIED" and key in self.runtimes:
                self.runtimes[key].update(obj)
            elif kind == "DELETED" and key in self.runtimes:
                self.runtimes.pop(key).stop()
        except Exception:  # a runtime bug must not fail the API request
            log.exception("event=pod_runtime_failed pod=%s/%s", *key)

    def runtime_for(self, namespace: str, name: str) -> Any:
        """The PodRuntime of a pod, or None (no runtime package, or no such pod)."""
        return self.runtimes.get((namespace, name))

    def stop(self) -> None:
        """Stop every pod runtime (server shutdown)."""
        for rt in self.runtimes.values():
            try:
                rt.stop()
            except Exception:
                log.exception("event=pod_runtime_stop_failed")
        self.runtimes.clear()


def node_status(cpus: int, memory: str) -> Obj:
    """A Ready node's status with capacity and allocatable."""
    cap = {"cpu": str(cpus), "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
    now = now_rfc3339()
    return {
        "capacity": cap, "allocatable": dict(cap),
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
        ],
        "nodeInfo": {},
    }
