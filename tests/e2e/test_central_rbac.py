"""Central Kubernetes roles end to end (issue 18, item 4): real kubectl (1.27
and 1.33) through arc-proxy, four users holding the four central roles
assigned with ``arcctl role assign``, decided by the sandbox API server's
real RBAC; revocation with ``arcctl role delete``; a cluster-admin through a
group assignment for the group-overage user; disabling removes every owned
object. Times from assign/delete to effect are printed (``-s``)."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo import DemoEnvironment
from tests.e2e.identity_support import Forge, agent_log_count, demo, token_kubeconfig
from tests.e2e.test_identity_positive import _arcctl, _config_for
from tests.support.e2e import Kubectl, Proxy, start_proxy
from tests.support.kubectl import require_kubectl
from tests.support.waits import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

CLUSTER_SCOPE = "/resourceGroups/default/clusters/demo"
SWITCH = "/api/v1/resourceGroups/default/clusters/demo/centralRbac"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
OWNED = "labelSelector=cluster-connect.dev%2Fcentral-rbac%3Downed"
# The bound from a change at the relay to its effect in the cluster:
# the waits below give up after it (they return as soon as the change shows).
EFFECT_BOUND = 10.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnvironment]:
    with demo(tmp_path_factory.mktemp("central-rbac")) as e:
        admin = e.sandbox_admin()
        for ns in ("payments", "other"):
            admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": ns}})
        yield e


@pytest.fixture(scope="module")
def forge(env: DemoEnvironment) -> Forge:
    return Forge(env)


@pytest.fixture(scope="module")
def proxy(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    p = start_proxy(env.client_config_path, tmp_path_factory.mktemp("kube-central") / "config", "-v")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def admin_config(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _config_for(env, tmp_path_factory.mktemp("admin") / "admin.yaml", env.identity.admin,
                       env.identity.admin_password)


def _relay(env: DemoEnvironment, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(env.dir / "relay" / "ca.crt"))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(env.relay_url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read() or b"null")


def _can_i(k: Kubectl, *args: str) -> str:
    return k.run("auth", "can-i", *args, check=False).stdout.decode().strip()


def _assign(admin_config: Path, role: str, assignee: str, scope: str, kind: str = "User") -> str:
    r = _arcctl(admin_config, "role", "assign", "--role", role, "--assignee", assignee,
                "--assignee-type", kind, "--scope", scope)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["id"])


def _forbidden(k: Kubectl, *args: str) -> bool:
    r = k.run(*args, check=False)
    return r.returncode != 0 and b"forbidden" in r.stderr.lower()


@pytest.fixture(scope="module")
def users(env: DemoEnvironment, forge: Forge, proxy: Proxy, admin_config: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Central RBAC on for ``demo``; alice viewer on the cluster, bob writer
    and admin@ admin on namespace ``payments``, the overage user
    cluster-admin through its 250th group. Returns each user's kubeconfig
    (static bearer token) and prints assign-to-effect times."""
    r = _arcctl(admin_config, "update", "-n", "demo", "--central-rbac", "on")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["centralRbac"] == {"enabled": True, "changed": True}
    assert _relay(env, "GET", SWITCH, forge.token("admin")) == (200, {"enabled": True})
    d = tmp_path_factory.mktemp("users")
    configs = {u: token_kubeconfig(proxy.kubeconfig, forge.token(u), d / u)
               for u in ("alice", "bob", "admin", "overage")}
    k = Kubectl(require_kubectl("1.33"), configs["alice"])
    assert _can_i(k, "list", "pods", "-n", "demo") == "no", "alice holds no role yet"
    started = time.monotonic()
    _assign(admin_config, "kubernetes-viewer", forge.oid("alice"), CLUSTER_SCOPE)
    wait_until(lambda: _can_i(k, "list", "pods", "-n", "demo") == "yes", "alice's viewer role", EFFECT_BOUND)
    print(f"central rbac: arcctl role assign to effect {time.monotonic() - started:.2f} s (incl. arcctl start)")
    _assign(admin_config, "kubernetes-writer", forge.oid("bob"), CLUSTER_SCOPE + "/namespaces/payments")
    _assign(admin_config, "kubernetes-admin", forge.oid("admin"), CLUSTER_SCOPE + "/namespaces/payments")
    overage_group = forge.groups_of("overage")[-1]
    _assign(admin_config, "kubernetes-cluster-admin", overage_group, CLUSTER_SCOPE, "Group")
    for user, check in (("bob", ("create", "deployments", "-n", "payments")),
                        ("admin", ("create", "rolebindings", "-n", "payments")),
                        ("overage", ("*", "*", "--all-namespaces"))):
        ku = Kubectl(require_kubectl("1.33"), configs[user])
        wait_until(lambda ku=ku, check=check: _can_i(ku, *check) == "yes", f"{user}'s role", EFFECT_BOUND)
    return configs


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_central_rbac_four_roles_decided_by_cluster_rbac(version: str, env: DemoEnvironment, forge: Forge,
                                                         users: dict[str, Path]) -> None:
    """viewer lists pods, cannot read a Secret or create; writer creates a
    Deployment in its namespace, not in another, not a RoleBinding; namespace
    admin creates a RoleBinding in its namespace only; cluster-admin (by
    group, overage) everything. ``auth whoami`` shows the central group and
    the agent's audit line names it."""
    binary = require_kubectl(version)
    alice, bob = Kubectl(binary, users["alice"]), Kubectl(binary, users["bob"])
    admin, root = Kubectl(binary, users["admin"]), Kubectl(binary, users["overage"])
    suffix = version.replace(".", "-")

    assert "api-0" in alice.text("get", "pods", "-n", "demo", "-o", "name")
    assert _forbidden(alice, "get", "secrets", "-n", "demo")
    assert _forbidden(alice, "create", "configmap", f"v-{suffix}", "-n", "demo")
    info = json.loads(alice.text("auth", "whoami", "-o", "json"))["status"]["userInfo"]
    assert f"arc-central:user:{forge.oid('alice')}" in info["groups"]
    assert agent_log_count(env, f"central=arc-central:user:{forge.oid('alice')}") > 0

    bob.run("create", "deployment", f"web-{suffix}", "--image", "nginx:1.25", "-n", "payments")
    assert _forbidden(bob, "create", "deployment", f"web-{suffix}", "--image", "nginx:1.25", "-n", "other")
    assert _forbidden(bob, "create", "rolebinding", f"rb-{suffix}", "--clusterrole", "view",
                      "--user", "x", "-n", "payments")
    assert _forbidden(bob, "get", "pods", "-n", "demo")

    admin.run("create", "rolebinding", f"rb-{suffix}", "--clusterrole", "view", "--user", "x", "-n", "payments")
    assert _forbidden(admin, "create", "rolebinding", f"rb-{suffix}", "--clusterrole", "view",
                      "--user", "x", "-n", "other")
    assert _forbidden(admin, "delete", "namespace", "payments")

    root.run("create", "namespace", f"made-by-root-{suffix}")
    assert f"rolebinding.rbac.authorization.k8s.io/rb-{suffix}" in root.text(
        "get", "rolebindings", "-n", "payments", "-o", "name")
    root.run("get", "secrets", "-A")
    assert _can_i(root, "delete", "clusterrolebindings") == "yes"


def test_central_rbac_revocation_then_disable_leaves_nothing(env: DemoEnvironment, forge: Forge,
                                                               admin_config: Path,
                                                               users: dict[str, Path]) -> None:
    """``arcctl role delete`` of alice's viewer role: her next request is
    403 within 10 s (printed); bob (writer) keeps working. ``arcctl update
    --central-rbac off`` removes every owned object and bob's access with it;
    again, it changes nothing; for an unregistered cluster it is one line."""
    binary = require_kubectl("1.33")
    alice, bob = Kubectl(binary, users["alice"]), Kubectl(binary, users["bob"])
    assert "api-0" in alice.text("get", "pods", "-n", "demo", "-o", "name")
    started = time.monotonic()
    r = _arcctl(admin_config, "role", "delete", "--assignee", forge.oid("alice"), "--role", "kubernetes-viewer")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _forbidden(alice, "get", "pods", "-n", "demo"), "alice's revocation", EFFECT_BOUND)
    print(f"central rbac: arcctl role delete to 403 {time.monotonic() - started:.2f} s (incl. arcctl start)")
    assert _can_i(bob, "create", "deployments", "-n", "payments") == "yes"

    sandbox = env.sandbox_admin()
    assert sandbox.call("GET", f"{RBAC}/clusterroles?{OWNED}")["items"], "no owned ClusterRoles while enabled"
    r = _arcctl(admin_config, "update", "-n", "demo", "--central-rbac", "off")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["centralRbac"] == {"enabled": False, "changed": True}
    wait_until(lambda: _forbidden(bob, "get", "deployments", "-n", "payments"), "bob's access to end", EFFECT_BOUND)
    for kind in ("clusterroles", "clusterrolebindings", "rolebindings"):
        wait_until(lambda kind=kind: not sandbox.call("GET", f"{RBAC}/{kind}?{OWNED}")["items"],
                   f"owned {kind} to be deleted", EFFECT_BOUND)
    r = _arcctl(admin_config, "update", "-n", "demo", "--central-rbac", "off")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["centralRbac"] == {"enabled": False, "changed": False}
    r = _arcctl(admin_config, "update", "-n", "no-such-cluster", "--central-rbac", "on")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
