"""The sandbox API server driven by real kubectl binaries (1.27, 1.29, 1.30, 1.33)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.kubectl import require_kubectl
from tests.support.processes import LineReader
from tests.support.sandbox import RunningApiServer

VERSIONS = ["1.27", "1.29", "1.30", "1.33"]
# Upper bound for a live watch event to show up in kubectl's output.
WATCH_DEADLINE = 20.0

pytestmark = pytest.mark.kubectl


def _ns(version: str) -> str:
    return "k" + version.replace(".", "")


@pytest.fixture(scope="module", params=VERSIONS)
def kubectl(request: pytest.FixtureRequest, sandbox_apiserver: RunningApiServer) -> tuple[str, str]:
    """(binary, namespace): each version works in its own namespace of the shared server."""
    binary = require_kubectl(request.param)
    ns = _ns(request.param)
    if sandbox_apiserver.kubectl(binary, "get", "ns", ns, check=False).returncode != 0:
        sandbox_apiserver.kubectl(binary, "create", "namespace", ns)
    return binary, ns


def test_kubectl_gets_nodes_namespaces_and_pods(sandbox_apiserver: RunningApiServer,
                                                kubectl: tuple[str, str]) -> None:
    """get nodes/namespaces/pods prints the seeded cluster as tables."""
    k, ns = kubectl
    nodes = sandbox_apiserver.kubectl(k, "get", "nodes").stdout
    assert nodes.splitlines()[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert nodes.count(" Ready ") == 3
    names = sandbox_apiserver.kubectl(k, "get", "namespaces", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public", f"namespace/{ns}"} <= set(names)
    out = sandbox_apiserver.kubectl(k, "get", "pods", "-A", check=False)
    assert out.returncode == 0, out.stderr


def test_kubectl_creates_configmap_secret_serviceaccount_deployment(sandbox_apiserver: RunningApiServer,
                                                                   kubectl: tuple[str, str]) -> None:
    """create configmap/secret/serviceaccount/deployment round-trips; 1.33 sends protobuf, 1.27 JSON."""
    k, ns = kubectl
    run = sandbox_apiserver.kubectl
    run(k, "-n", ns, "create", "configmap", "cfg", "--from-literal=greeting=hello")
    run(k, "-n", ns, "create", "secret", "generic", "sec", "--from-literal=password=s3cr3t")
    run(k, "-n", ns, "create", "serviceaccount", "builder")
    run(k, "-n", ns, "create", "deployment", "web", "--image=nginx:1.27", "--replicas=2", "--port=8080")
    cm = json.loads(run(k, "-n", ns, "get", "configmap", "cfg", "-o", "json").stdout)
    assert cm["data"] == {"greeting": "hello"}
    sec = json.loads(run(k, "-n", ns, "get", "secret", "sec", "-o", "json").stdout)
    assert sec["data"] == {"password": "czNjcjN0"} and sec["type"] == "Opaque"
    run(k, "-n", ns, "get", "serviceaccount", "builder")
    dep = json.loads(run(k, "-n", ns, "get", "deployment", "web", "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "nginx:1.27" and container["ports"][0]["containerPort"] == 8080
    assert dep["spec"]["selector"]["matchLabels"] == {"app": "web"}
    assert dep["status"]["readyReplicas"] == 2
    creates = [a for a in sandbox_apiserver.server.audit
               if a.verb == "create" and a.path == f"/api/v1/namespaces/{ns}/configmaps"]
    assert creates and creates[-1].status == 201
    if k.endswith("1.33"):
        assert creates[-1].content_type == "application/vnd.kubernetes.protobuf"
    if k.endswith("1.27"):
        assert creates[-1].content_type == "application/json"


def test_kubectl_applies_twice_then_configures(sandbox_apiserver: RunningApiServer, kubectl: tuple[str, str],
                                               tmp_path: object) -> None:
    """apply -f creates a Deployment and a Pod, re-apply is unchanged, an edit is configured."""
    k, ns = kubectl
    manifest = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: api, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      containers:
      - name: api
        image: busybox:1.36
        env: [{{name: MODE, value: "one"}}, {{name: KEEP, value: "yes"}}]
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: solo, namespace: {ns}, labels: {{tier: solo}}}}
spec:
  containers: [{{name: c, image: busybox}}]
"""
    run = sandbox_apiserver.kubectl
    first = run(k, "apply", "-f", "-", input=manifest).stdout
    assert "deployment.apps/api created" in first and "pod/solo created" in first
    second = run(k, "apply", "-f", "-", input=manifest).stdout
    assert "deployment.apps/api unchanged" in second and "pod/solo unchanged" in second
    third = run(k, "apply", "-f", "-", input=manifest.replace('"one"', '"two"')).stdout
    assert "deployment.apps/api configured" in third
    dep = json.loads(run(k, "-n", ns, "get", "deployment", "api", "-o", "json").stdout)
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "MODE", "value": "two"}, {"name": "KEEP", "value": "yes"}]
    assert dep["metadata"]["generation"] == 2


def test_kubectl_filters_by_selectors_and_deletes(sandbox_apiserver: RunningApiServer,
                                                  kubectl: tuple[str, str]) -> None:
    """Label and field selectors filter pods; delete removes one and a second get is NotFound."""
    k, ns = kubectl
    run = sandbox_apiserver.kubectl
    run(k, "-n", ns, "run", "sel-a", "--image=busybox", "--labels=team=a,env=prod")
    run(k, "-n", ns, "run", "sel-b", "--image=busybox", "--labels=team=b,env=prod")
    names = run(k, "-n", ns, "get", "pods", "-l", "team=a", "-o", "name").stdout.split()
    assert names == ["pod/sel-a"]
    names = run(k, "-n", ns, "get", "pods", "-l", "env=prod,team notin (a)", "-o", "name").stdout.split()
    assert names == ["pod/sel-b"]
    names = run(k, "-n", ns, "get", "pods", "--field-selector", "metadata.name=sel-b,status.phase=Running",
                "-o", "name").stdout.split()
    assert names == ["pod/sel-b"]
    assert 'pod "sel-a" deleted' in run(k, "-n", ns, "delete", "pod", "sel-a").stdout
    gone = run(k, "-n", ns, "get", "pod", "sel-a", check=False)
    assert gone.returncode != 0 and 'pods "sel-a" not found' in gone.stderr


def test_kubectl_get_watch_shows_new_pod_live(sandbox_apiserver: RunningApiServer,
                                              kubectl: tuple[str, str]) -> None:
    """get -w prints a pod created after the watch started, while the watch is running."""
    k, ns = kubectl
    env = {**os.environ, "KUBECONFIG": str(sandbox_apiserver.kubeconfig)}
    sandbox_apiserver.kubectl(k, "-n", ns, "run", "before-watch", "--image=busybox")
    proc = subprocess.Popen([k, "-n", ns, "get", "pods", "-w"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = LineReader(proc.stdout)
    try:
        # The initial list is printed first; only then is the new pod created.
        lines.wait_for(lambda line: line.startswith("before-watch "), WATCH_DEADLINE)
        sandbox_apiserver.kubectl(k, "-n", ns, "run", "watched", "--image=busybox")
        lines.wait_for(lambda line: line.startswith("watched "), WATCH_DEADLINE)
        assert proc.poll() is None, "the watch ended instead of staying open"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_kubectl_token_for_serviceaccount_is_authenticated_and_authorized(
        sandbox_apiserver: RunningApiServer, kubectl: tuple[str, str]) -> None:
    """create token mints a JWT; it authenticates as the SA and RBAC allows and denies it."""
    k, ns = kubectl
    run = sandbox_apiserver.kubectl
    run(k, "-n", ns, "create", "serviceaccount", "robot")
    token = run(k, "-n", ns, "create", "token", "robot", "--duration", "1h").stdout.strip()
    assert token.count(".") == 2
    cfg = sandbox_apiserver.token_kubeconfig(token, f"robot-{ns}")
    denied = run(k, "-n", ns, "get", "pods", kubeconfig=cfg, check=False)
    assert denied.returncode != 0
    assert (f'pods is forbidden: User "system:serviceaccount:{ns}:robot" cannot list resource "pods" '
            f'in API group "" in the namespace "{ns}"') in denied.stderr
    run(k, "-n", ns, "create", "rolebinding", "robot-view", "--clusterrole=view", f"--serviceaccount={ns}:robot")
    assert run(k, "-n", ns, "get", "pods", kubeconfig=cfg).returncode == 0
    secrets = run(k, "-n", ns, "get", "secrets", kubeconfig=cfg, check=False)
    assert secrets.returncode != 0 and "Forbidden" in secrets.stderr
    assert run(k, "-n", ns, "auth", "can-i", "list", "pods", kubeconfig=cfg).stdout.strip() == "yes"
    assert run(k, "-n", ns, "auth", "can-i", "delete", "pods", kubeconfig=cfg, check=False).stdout.strip() == "no"
    bad = run(k, "get", "pods", kubeconfig=sandbox_apiserver.token_kubeconfig(token[:-4] + "AAAA", "bad"),
              check=False)
    assert bad.returncode != 0 and "Unauthorized" in bad.stderr


def test_kubectl_auth_whoami_and_can_i_tell_the_truth(sandbox_apiserver: RunningApiServer,
                                                       kubectl: tuple[str, str]) -> None:
    """auth whoami names the admin; can-i answers yes for admin and no for an impersonated nobody."""
    k, _ns = kubectl
    run = sandbox_apiserver.kubectl
    who = run(k, "auth", "whoami", "-o", "json")
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == "admin"
    assert run(k, "auth", "can-i", "create", "deployments").stdout.strip() == "yes"
    nobody = run(k, "auth", "can-i", "get", "pods", "--as", "nobody", check=False)
    assert nobody.stdout.strip() == "no" and nobody.returncode == 1


def test_kubectl_impersonation_allowed_and_refused(sandbox_apiserver: RunningApiServer,
                                                   kubectl: tuple[str, str]) -> None:
    """--as/--as-group work for the admin and are refused for an SA with Kubernetes' message."""
    k, ns = kubectl
    run = sandbox_apiserver.kubectl
    who = json.loads(run(k, "auth", "whoami", "--as", "jane", "--as-group", "devs", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == "jane"
    assert who["status"]["userInfo"]["groups"] == ["devs", "system:authenticated"]
    run(k, "-n", ns, "create", "serviceaccount", "mimic")
    token = run(k, "-n", ns, "create", "token", "mimic").stdout.strip()
    cfg = sandbox_apiserver.token_kubeconfig(token, f"mimic-{ns}")
    refused = run(k, "get", "pods", "--as", "jane", kubeconfig=cfg, check=False)
    assert refused.returncode != 0
    assert (f'Error from server (Forbidden): users "jane" is forbidden: User "system:serviceaccount:{ns}:mimic" '
            'cannot impersonate resource "users" in API group "" at the cluster scope') in refused.stderr


def test_kubectl_deployment_runs_scales_and_replaces_pods(sandbox_apiserver: RunningApiServer,
                                                          kubectl: tuple[str, str]) -> None:
    """A Deployment owns spec.replicas pods; scale and set image reconcile them; delete removes them."""
    k, ns = kubectl
    run = sandbox_apiserver.kubectl
    run(k, "-n", ns, "create", "deployment", "rs", "--image=busybox:1", "--replicas=2")

    def pods() -> list[dict[str, object]]:
        items = json.loads(run(k, "-n", ns, "get", "pods", "-l", "app=rs", "-o", "json").stdout)["items"]
        return [{"name": p["metadata"]["name"], "image": p["spec"]["containers"][0]["image"]} for p in items]

    assert len(pods()) == 2 and all(str(p["name"]).startswith("rs-") for p in pods())
    assert "scaled" in run(k, "-n", ns, "scale", "deployment", "rs", "--replicas=3").stdout
    assert len(pods()) == 3
    run(k, "-n", ns, "set", "image", "deployment/rs", "busybox=busybox:2")
    assert [p["image"] for p in pods()] == ["busybox:2"] * 3
    status = run(k, "-n", ns, "rollout", "status", "deployment/rs", "--timeout=20s").stdout
    assert 'deployment "rs" successfully rolled out' in status
    refused = run(k, "delete", "namespace", "default", check=False)
    assert 'namespaces "default" is forbidden: this namespace may not be deleted' in refused.stderr
    run(k, "-n", ns, "delete", "deployment", "rs")
    assert pods() == []


def test_kubectl_exec_and_logs_follow_go_through_the_server(sandbox_apiserver: RunningApiServer,
                                                            kubectl: tuple[str, str]) -> None:
    """exec is handed to sandbox.streaming after authorization; logs -f streams a line written later."""
    pytest.importorskip("sandbox.streaming")
    k, ns = kubectl
    run = sandbox_apiserver.kubectl
    run(k, "-n", ns, "run", "talker", "--image=busybox")
    assert run(k, "-n", ns, "exec", "talker", "--", "echo", "hi").stdout == "hi\n"
    failed = run(k, "-n", ns, "exec", "talker", "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7
    run(k, "-n", ns, "exec", "talker", "--", "sh", "-c", "echo first-line > /proc/1/fd/1")
    env = {**os.environ, "KUBECONFIG": str(sandbox_apiserver.kubeconfig)}
    proc = subprocess.Popen([k, "-n", ns, "logs", "-f", "talker"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = LineReader(proc.stdout)
    try:
        # Only once the existing log is shown is the next line written: it can only arrive by following.
        lines.wait_for(lambda line: line == "first-line\n", WATCH_DEADLINE)
        run(k, "-n", ns, "exec", "talker", "--", "sh", "-c", "echo followed-line > /proc/1/fd/1")
        lines.wait_for(lambda line: line == "followed-line\n", WATCH_DEADLINE)
        assert proc.poll() is None, "logs -f ended instead of following"
    finally:
        proc.kill()
        proc.wait(timeout=10)
