"""Identity, the positive half (issue 4, "Done when"), end to end through the
real path with real kubectl: who Kubernetes sees, group-bound RBAC, overage
resolution, service-account pass-through, token refresh through the exec
plugin, relay-session renewal under an open watch, and the proof that a token's
signature is verified once, not per request.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo import DemoEnvironment
from tests.e2e.identity_support import (
    WAIT,
    Forge,
    agent_log_count,
    demo,
    raw_request,
    relay_metric,
    relay_status,
    token_kubeconfig,
    whoami_head,
)
from tests.support.e2e import Kubectl, Proxy, start_proxy, stop
from tests.support.kubectl import require_kubectl
from tests.support.processes import ROOT, child_env

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

# Lifetime of the short-lived tokens (seconds): the relay session and the exec
# plugin both renew several times within one test.
SHORT_LIFETIME = 6
RBAC = "/apis/rbac.authorization.k8s.io/v1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnvironment]:
    """One demo for the whole module."""
    with demo(tmp_path_factory.mktemp("identity-positive")) as e:
        yield e


@pytest.fixture(scope="module")
def forge(env: DemoEnvironment) -> Forge:
    """Tokens as the running issuer mints them."""
    return Forge(env)


@pytest.fixture(scope="module")
def kubectl_bin() -> str:
    """kubectl matching the sandbox's version."""
    return require_kubectl("1.33")


@pytest.fixture(scope="module")
def proxy(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The demo user's arc-proxy with one-hour tokens (exec-plugin kubeconfig)."""
    p = start_proxy(env.client_config_path, tmp_path_factory.mktemp("kube-positive") / "config", "-v")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def short_config(env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo user's client config asking the issuer for 6-second tokens."""
    doc = yaml.safe_load(env.client_config_path.read_text())
    doc["auth"]["lifetime"] = SHORT_LIFETIME
    path = tmp_path_factory.mktemp("short") / "client-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def short_proxy(short_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """arc-proxy whose relay session and kubeconfig tokens live 6 seconds."""
    p = start_proxy(short_config, tmp_path_factory.mktemp("kube-short") / "config", "-v")
    yield p
    p.stop()


def _user_info(kubectl: Kubectl) -> dict[str, Any]:
    return dict(json.loads(kubectl.text("auth", "whoami", "-o", "json"))["status"]["userInfo"])


def _can_i(kubectl: Kubectl, *args: str) -> str:
    return kubectl.run("auth", "can-i", *args, check=False).stdout.decode().strip()


def _bind_role(env: DemoEnvironment, name: str, namespace: str, group: str, resources: list[str],
               verbs: list[str]) -> None:
    admin = env.sandbox_admin()
    admin.create(f"{RBAC}/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}]})
    admin.create(f"{RBAC}/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]})


def test_positive_whoami_shows_oidc_oid_and_groups(env: DemoEnvironment, forge: Forge, proxy: Proxy,
                                                   kubectl_bin: str) -> None:
    """``kubectl auth whoami`` through the exec-plugin kubeconfig shows the
    OIDC user's oid, its groups, and the oid/tid extras."""
    info = _user_info(Kubectl(kubectl_bin, proxy.kubeconfig))
    assert info["username"] == env.identity.user_oid
    assert forge.group_id("developers") in info["groups"]
    assert "system:authenticated" in info["groups"]
    assert info["extra"]["oid"] == [env.identity.user_oid]
    assert info["extra"]["tid"] == [env.identity.tenant_id]


def test_positive_group_rbac_grants_exactly_that(env: DemoEnvironment, forge: Forge, proxy: Proxy,
                                                 kubectl_bin: str, tmp_path: Path) -> None:
    """A Role bound to the ``viewers`` group (bob is a member; no binding names
    bob): list pods in ``demo`` yes; delete there, or list elsewhere, no."""
    _bind_role(env, "viewers-read-pods", "demo", forge.group_id("viewers"), ["pods"], ["get", "list"])
    bob = Kubectl(kubectl_bin, token_kubeconfig(proxy.kubeconfig, forge.token("bob"), tmp_path / "kc"))
    assert _can_i(bob, "list", "pods", "-n", "demo") == "yes"
    assert _can_i(bob, "delete", "pods", "-n", "demo") == "no"
    assert _can_i(bob, "list", "pods", "-n", "kube-system") == "no"
    assert _can_i(bob, "list", "secrets", "-n", "demo") == "no"
    assert "api-0" in bob.text("get", "pods", "-n", "demo", "-o", "name")
    denied = bob.run("get", "pods", "-n", "kube-system", check=False)
    assert denied.returncode != 0 and b"forbidden" in denied.stderr.lower()


def test_positive_overage_user_works_through_group_resolution(env: DemoEnvironment, forge: Forge,
                                                               proxy: Proxy, kubectl_bin: str,
                                                               tmp_path: Path) -> None:
    """The overage user (250 groups: the token carries ``_claim_names`` instead
    of ``groups``) is resolved through the member-groups source, at the proxy
    (all groups impersonated, RBAC on the 250th group works) and at the relay."""
    groups = forge.groups_of("overage")
    assert len(groups) > 200
    token = forge.token("overage")
    assert "groups" not in forge.claims("overage")
    _bind_role(env, "overage-last-group", "demo", groups[-1], ["configmaps"], ["list"])
    k = Kubectl(kubectl_bin, token_kubeconfig(proxy.kubeconfig, token, tmp_path / "kc"))
    info = _user_info(k)
    assert info["username"] == forge.oid("overage")
    assert set(groups) <= set(info["groups"])
    assert _can_i(k, "list", "configmaps", "-n", "demo") == "yes"
    assert _can_i(k, "delete", "configmaps", "-n", "demo") == "no"
    assert relay_status(env, "/api/v1/clusters", token) == 200


def test_positive_service_account_token_via_arc_proxy_token(env: DemoEnvironment, kubectl_bin: str,
                                                            tmp_path: Path) -> None:
    """``arc-proxy --token SA_TOKEN``: the kubeconfig user carries the token and
    Kubernetes sees the service account (pass-through, no impersonation)."""
    admin = env.sandbox_admin()
    admin.create("/api/v1/namespaces/default/serviceaccounts",
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ci-bot"}})
    sa_token = admin.call("POST", "/api/v1/namespaces/default/serviceaccounts/ci-bot/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": 3600}}, ok_conflict=False)["status"]["token"]
    p = start_proxy(env.client_config_path, tmp_path / "config", "-v", "--token", sa_token)
    try:
        doc = yaml.safe_load(p.kubeconfig.read_text())
        user = next(u["user"] for u in doc["users"])
        assert user.get("token") == sa_token and "exec" not in user
        info = _user_info(Kubectl(kubectl_bin, p.kubeconfig))
        assert info["username"] == "system:serviceaccount:default:ci-bot"
        assert "system:serviceaccounts" in info["groups"]
    finally:
        p.stop()


def test_positive_token_signature_verified_once_at_relay_and_proxy(env: DemoEnvironment, forge: Forge,
                                                                   proxy: Proxy) -> None:
    """One fresh token, 25 requests each on its own TLS connection (so 25
    tunnel streams) through arc-proxy, and 25 relay API calls: kube-aad-proxy
    validates it once (its log has one validation line for it) and the relay
    verifies its signature once (``arc_relay_token_signature_verifications_total``)."""
    token = forge.token("alice")
    alice = forge.oid("alice")
    needle = f"oidc token validated principal={alice}"
    before_agent = agent_log_count(env, needle)
    before_relay = relay_metric(env, "arc_relay_token_signature_verifications_total")
    for _ in range(25):
        assert raw_request(proxy.kubeconfig, whoami_head(token)).status == 201
        assert relay_status(env, "/api/v1/clusters", token) == 200
    assert agent_log_count(env, needle) - before_agent == 1
    assert relay_metric(env, "arc_relay_token_signature_verifications_total") - before_relay == 1


def _exec_credential(config: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "client.arcctl", "get-token", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env())
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def _expiry(cred: dict[str, Any]) -> float:
    stamp = cred["status"]["expirationTimestamp"]
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _sleep_past(epoch: float) -> None:
    # Waiting for a token to expire is the point of the test, not a timing assertion.
    time.sleep(max(0.0, epoch - time.time()) + 0.5)


def test_positive_kubectl_outlives_token_expiry_via_exec_plugin(short_config: Path, short_proxy: Proxy,
                                                                env: DemoEnvironment, kubectl_bin: str) -> None:
    """The kubeconfig runs ``arcctl get-token`` (ExecCredential v1 with
    ``expirationTimestamp``); with 6-second tokens kubectl keeps working past
    the expiry because the plugin hands out a new token (refresh grant)."""
    doc = yaml.safe_load(short_proxy.kubeconfig.read_text())
    user = next(u["user"] for u in doc["users"])
    assert user["exec"]["apiVersion"] == "client.authentication.k8s.io/v1"
    assert "get-token" in user["exec"]["args"]
    cred = _exec_credential(short_config)
    assert cred["kind"] == "ExecCredential" and cred["apiVersion"] == "client.authentication.k8s.io/v1"
    first_token, first_exp = cred["status"]["token"], _expiry(cred)
    assert time.time() < first_exp <= time.time() + SHORT_LIFETIME + 1
    # The plugin answers from its cache while the token is fresh.
    again = _exec_credential(short_config)
    assert again["status"]["token"] == first_token or _expiry(again) > first_exp
    k = Kubectl(kubectl_bin, short_proxy.kubeconfig)
    assert _user_info(k)["username"] == env.identity.user_oid
    _sleep_past(first_exp)
    assert _user_info(k)["username"] == env.identity.user_oid
    later = _exec_credential(short_config)
    assert later["status"]["token"] != first_token and _expiry(later) > first_exp


def test_positive_relay_session_renews_and_expired_token_ends_watch_and_logs(
        env: DemoEnvironment, short_proxy: Proxy, kubectl_bin: str) -> None:
    """arc-proxy's relay session token lives 6 s. New kubectl calls (get, exec)
    work throughout: the proxy renews its session before expiry. An open
    ``kubectl get -w`` and ``kubectl logs -f`` outlive the renewal (they stay on
    the old session) but end once the token that opened them expired: a stream lives no longer
    than its credential (issue 12 item 6; the relay resets it FORBIDDEN
    "token expired")."""
    admin = env.sandbox_admin()
    def cm(name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "demo"}}
    admin.create("/api/v1/namespaces/demo/configmaps", cm("before"))
    k = Kubectl(kubectl_bin, short_proxy.kubeconfig)
    before, marker = f"before-{uuid.uuid4().hex}", f"after-expiry-{uuid.uuid4().hex}"
    k.run("run", "renew-shell", "-n", "demo", "--image", "busybox:1.36", "--restart", "Never")
    k.run("exec", "-n", "demo", "renew-shell", "--", "sh", "-c", f"echo {before} > /proc/1/fd/1")
    watch, out, _ = k.popen("get", "configmaps", "-n", "demo", "-w", "-o", "name")
    logs, logs_out, _ = k.popen("logs", "-f", "-n", "demo", "renew-shell")
    try:
        out.wait_for("configmap/before", WAIT)
        logs_out.wait_for(before, WAIT)
        short_proxy.err.drain()  # a renewal logged before now does not count
        short_proxy.err.wait_for("renewed its relay session", WAIT)
        admin.create("/api/v1/namespaces/demo/configmaps", cm("after-renewal"))
        # Both long-lived streams end when the token that opened them expires.
        watch.wait(timeout=WAIT)
        logs.wait(timeout=WAIT)
        k.run("exec", "-n", "demo", "renew-shell", "--", "sh", "-c", f"echo {marker} > /proc/1/fd/1")
        assert marker in k.text("logs", "-n", "demo", "renew-shell")
        assert "configmap/after-renewal" in k.text("get", "configmaps", "-n", "demo", "-o", "name")
    finally:
        stop(watch)
        stop(logs)

def _arcctl(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.arcctl", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env(),
                          input=stdin)


def _config_for(env: DemoEnvironment, path: Path, user: str, password: str) -> Path:
    doc = yaml.safe_load(env.client_config_path.read_text())
    doc["auth"] = {**doc["auth"], "username": user, "password": password}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_positive_arcctl_role_assign_list_delete_export_import(env: DemoEnvironment, forge: Forge,
                                                               tmp_path: Path) -> None:
    """``arcctl role``: the admin gives the ``viewers`` *group* cluster-user on
    the demo cluster, so bob (a member, with no assignment of his own) can then
    open streams there; ``list`` shows it; ``export`` / ``delete`` / ``import``
    round-trips every assignment; a viewer-only role at resource-group scope
    lets the overage user (groups resolved at the relay; none of them holds a
    role) show the cluster but not connect, and the refusal names the missing
    role and scope."""
    from tests.e2e.test_identity_attacks import _client_open  # the raw relay client

    admin = _config_for(env, tmp_path / "admin.yaml", env.identity.admin, env.identity.admin_password)
    viewers = forge.group_id("viewers")
    bob_token = forge.token("bob")
    assert asyncio_run(_client_open(env, bob_token, b"default/demo"))[0] == "FORBIDDEN"
    r = _arcctl(admin, "role", "assign", "--role", "cluster-user", "--assignee", viewers,
                "--assignee-type", "Group", "-n", "demo")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["scope"] == "/resourceGroups/default/clusters/demo" and created["principalType"] == "Group"
    assert asyncio_run(_client_open(env, bob_token, b"default/demo")) == ("accepted", "")

    listed = json.loads(_arcctl(admin, "role", "list", "--assignee", viewers).stdout)
    assert [a["id"] for a in listed] == [created["id"]]
    r = _arcctl(admin, "role", "assign", "--role", "viewer", "--assignee", forge.oid("overage"), "-g", "default")
    assert r.returncode == 0, r.stderr
    viewer_token = forge.token("overage")
    assert relay_status(env, "/api/v1/resourceGroups/default/clusters/demo", viewer_token) == 200
    code, reason = asyncio_run(_client_open(env, viewer_token, b"default/demo"))
    assert code == "FORBIDDEN" and "cluster-user" in reason and "/resourceGroups/default/clusters/demo" in reason

    export = tmp_path / "roles.yaml"
    r = _arcctl(admin, "role", "export", "-o", "yaml", "--file", str(export))
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(export.read_text())
    assert doc["kind"] == "RoleAssignmentList" and len(doc["items"]) >= 3
    for item in doc["items"]:
        assert _arcctl(admin, "role", "delete", "--id", item["id"]).returncode == 0
    assert json.loads(_arcctl(admin, "role", "list").stdout) == []
    assert asyncio_run(_client_open(env, bob_token, b"default/demo"))[0] == "FORBIDDEN"
    r = _arcctl(admin, "role", "import", "--file", "-", stdin=json.dumps(doc))  # JSON reads too
    assert r.returncode == 0, r.stderr
    restored = {a["id"]: a for a in json.loads(_arcctl(admin, "role", "list").stdout)}
    assert {i["id"] for i in doc["items"]} == set(restored)
    assert asyncio_run(_client_open(env, bob_token, b"default/demo")) == ("accepted", "")

    # A non-admin cannot assign; the error is one line naming role and scope.
    bob = _config_for(env, tmp_path / "bob.yaml", "bob@contoso.example", "bob-password")
    r = _arcctl(bob, "role", "assign", "--role", "admin", "--assignee", forge.oid("bob"), "--scope", "/")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "admin role at scope /" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def asyncio_run(coro: Any) -> Any:
    """``asyncio.run`` (kept short for the calls above)."""
    import asyncio

    return asyncio.run(coro)
