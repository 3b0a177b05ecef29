"""Cluster lifecycle end to end: ``arcctl connect`` into the sandbox API server
(exec-plugin kubeconfig, onboarding role only), ``arc-agent`` started from what
connect stored, ``show``/``list`` through Connecting -> Connected -> Offline ->
Connected, and ``delete`` with and without ``--force``.

The tests of this module run in order and share one environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client as k8s

from certs import client_ssl_context, fingerprint_sha256, generate_key_pair
from identity import sign_agent_assertion
from tests.support.lifecycle import (
    GROUP,
    LifecycleEnv,
    json_out,
    running_lifecycle_env,
    sandbox_nodes,
)
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(120)

NAME = "edge-1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleEnv]:
    """Sandbox API server, IdP and relay, no cluster registered."""
    with running_lifecycle_env(tmp_path_factory.mktemp("lifecycle")) as e:
        yield e


def connect(env: LifecycleEnv, *extra: str, name: str = NAME) -> tuple[int, str, str]:
    # The agent is started by each test after connect: connect must not wait for it.
    p = env.arcctl("connect", "-n", name, "-g", GROUP, "--location", "westeurope",
                   "--kube-config", env.kubeconfig, "--no-wait", *extra)
    return p.returncode, p.stdout, p.stderr


def test_connect_dry_run_prints_manifests_and_changes_nothing(env: LifecycleEnv) -> None:
    """--dry-run prints every manifest as YAML and neither registers nor applies."""
    code, out, err = connect(env, "--dry-run")
    assert code == 0, err
    kinds = [d["kind"] for d in yaml.safe_load_all(out)]
    assert kinds == ["Namespace", "Secret", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                     "ConfigMap", "Deployment"]
    listed = json_out(env.arcctl("list", "-g", GROUP))
    assert listed == []
    assert "arc-system" not in [n.metadata.name for n in env.core().list_namespace().items]


def test_connect_registers_and_applies_manifests(env: LifecycleEnv) -> None:
    """connect through an exec-plugin kubeconfig with the onboarding role: step
    lines, the registration in state Connecting, the objects in arc-system."""
    code, out, err = connect(env)
    assert code == 0, err + out + env.logs()
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "Namespace arc-system created" in out and "Deployment arc-agent created" in out
    reg = env.registration(NAME)
    assert reg["connectivityStatus"] == "Connecting"
    assert reg["location"] == "westeurope"
    files, config = env.read_agent_objects()
    assert files["agent.crt"].strip() == reg["agentPublicKeyCertificate"].strip()
    assert config["cluster"] == {"resource_group": GROUP, "name": NAME}
    assert config["relay"]["url"] == env.demo.relay_url
    rbac = k8s.RbacAuthorizationV1Api(env.core().api_client)
    role = rbac.read_cluster_role("arc-agent-arc-system")
    assert any((r.to_dict().get("nonResourceURLs") or r.to_dict().get("non_resource_urls")) == ["/version"]
               for r in role.rules), role.rules
    binding = rbac.read_cluster_role_binding("arc-agent-arc-system")
    assert binding.subjects[0].name == "arc-agent" and binding.subjects[0].namespace == "arc-system"


def test_connect_second_run_changes_nothing(env: LifecycleEnv) -> None:
    """A second connect reuses the key from the Secret and changes no object."""
    before = env.registration(NAME)["agentPublicKeyCertificate"]
    secret_rv = env.core().read_namespaced_secret("arc-agent", "arc-system").metadata.resource_version
    code, out, err = connect(env)
    assert code == 0, err
    assert "nothing changed" in out and "registration of lab/edge-1 unchanged" in out
    assert " created" not in out and " updated" not in out
    assert env.registration(NAME)["agentPublicKeyCertificate"] == before
    assert env.core().read_namespaced_secret("arc-agent", "arc-system").metadata.resource_version == secret_rv


def test_connect_refuses_name_taken_by_another_key(env: LifecycleEnv) -> None:
    """A name registered with another agent's key is refused in one line."""
    other = generate_key_pair(f"{GROUP}/taken").certificate_pem.decode()
    asyncio.run(env.admin_call(lambda api: api.put_cluster(GROUP, "taken", {
        "agentPublicKeyCertificate": other})))
    code, _out, err = connect(env, name="taken")
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "already registered" in err and "Traceback" not in err
    assert env.registration("taken")["agentPublicKeyCertificate"] == other


def test_connect_of_another_name_takes_over_nothing(env: LifecycleEnv) -> None:
    """A second cluster name connected into the same Kubernetes cluster: refused
    before anything changes, naming the objects, their owner and --adopt."""
    before = env.core().read_namespaced_config_map("arc-agent", "arc-system").metadata.resource_version
    code, out, err = connect(env, name="intruder")
    assert code != 0, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "refusing to take over" in err and f"owned by {GROUP}/{NAME}" in err and "--adopt" in err
    assert "ClusterRole arc-agent-arc-system" in err and "Deployment arc-system/arc-agent" in err
    assert "intruder" not in [c["name"] for c in json_out(env.arcctl("list", "-g", GROUP))]
    assert env.core().read_namespaced_config_map("arc-agent", "arc-system").metadata.resource_version == before
    assert env.registration(NAME)["connectivityStatus"] == "Connecting"


def test_connect_user_errors_are_one_line_and_register_nothing(env: LifecycleEnv) -> None:
    """An unreachable cluster, a missing kubeconfig and a user without the
    onboarding role each give one line, a non-zero exit and no registration."""
    dead = env.base / "kubeconfig-unreachable"
    doc = yaml.safe_load(Path(env.kubeconfig).read_text())
    doc["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"
    dead.write_text(yaml.safe_dump(doc))
    bob = env.base / "bob-config.yaml"
    cfg = yaml.safe_load(env.alice_config.read_text())
    cfg["auth"].update(username="bob@contoso.example", password="bob-password")
    bob.write_text(yaml.safe_dump(cfg))
    runs = [
        (env.arcctl("connect", "-n", "err-1", "--kube-config", str(dead)), "cannot reach the API server"),
        (env.arcctl("connect", "-n", "err-1", "--kube-config", str(env.base / "missing")), "cannot use"),
        (env.arcctl("connect", "-n", "err-1", "--kube-config", env.kubeconfig, config=bob), "role"),
    ]
    for p, needle in runs:
        assert p.returncode != 0, p.stdout
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert "err-1" not in [c["name"] for c in json_out(env.arcctl("list", "-g", GROUP))]


def test_agent_reports_metadata_and_goes_connected(env: LifecycleEnv) -> None:
    """The agent started from the stored config connects; show reports its
    metadata, with node and core counts equal to the sandbox's nodes."""
    env.start_agent(NAME, metadata_interval=1)
    wait_until(lambda: env.status(NAME) == "Connected", "Connected")
    nodes, cores = sandbox_nodes(env)
    reg = wait_until(lambda: (r := env.registration(NAME)).get("totalNodeCount") is not None and r,
                   "metadata")
    shown = json_out(env.arcctl("show", "-n", NAME, "-g", GROUP))
    for key in ("connectivityStatus", "lastConnectivityTime", "agentVersion", "kubernetesVersion",
                "totalNodeCount", "totalCoreCount", "agentPublicKeyCertificateSha256", "location",
                "provisioningState"):
        assert shown.get(key) not in (None, ""), key
    assert (shown["totalNodeCount"], shown["totalCoreCount"]) == (nodes, cores)
    assert shown["kubernetesVersion"] == "v1.33.0" and reg["agentVersion"]


def test_agent_reports_metadata_periodically(env: LifecycleEnv) -> None:
    """A node added to the cluster shows up in the next periodic report."""
    nodes, cores = sandbox_nodes(env)
    assert env.registration(NAME).get("totalCoreCount") == cores
    env.core().create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "lifecycle-extra"},
                            "status": {"capacity": {"cpu": "3", "memory": "4Gi"}}})
    new_nodes, new_cores = sandbox_nodes(env)
    assert new_nodes == nodes + 1
    wait_until(lambda: env.registration(NAME).get("totalCoreCount") == new_cores, "new core count")


def test_list_in_three_formats(env: LifecycleEnv) -> None:
    """list -o json|yaml|table shows the cluster and its status."""
    as_json = json_out(env.arcctl("list", "-g", GROUP, "-o", "json"))
    assert [c["name"] for c in as_json if c["name"] == NAME] == [NAME]
    as_yaml = env.arcctl("list", "-g", GROUP, "-o", "yaml")
    assert as_yaml.returncode == 0
    assert any(c["name"] == NAME and c["connectivityStatus"] == "Connected" for c in yaml.safe_load(as_yaml.stdout))
    table = env.arcctl("list", "-g", GROUP, "-o", "table")
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "RESOURCEGROUP", "CONNECTIVITYSTATUS"]
    assert any(r.split()[:3] == [NAME, GROUP, "Connected"] for r in rows)


def test_status_goes_offline_and_back(env: LifecycleEnv) -> None:
    """Agent stopped -> Offline -> restarted -> Connected; the same after kill -9;
    a frozen agent (SIGSTOP: a partition, the TCP connection stays up) goes
    Offline through the relay's missed heartbeat, and back after SIGCONT."""
    first = env.registration(NAME)["lastConnectivityTime"]
    env.stop_agent(NAME)
    wait_until(lambda: env.status(NAME) == "Offline", "Offline after stop")
    assert env.registration(NAME)["lastConnectivityTime"] >= first
    child = env.start_agent(NAME)
    wait_until(lambda: env.status(NAME) == "Connected", "Connected after restart")
    assert child.proc is not None
    child.proc.kill()
    child.proc.wait(5)
    wait_until(lambda: env.status(NAME) == "Offline", "Offline after kill -9")
    child = env.start_agent(NAME)
    wait_until(lambda: env.status(NAME) == "Connected", "Connected after kill -9")
    os.kill(child.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: env.status(NAME) == "Offline", "Offline after missed heartbeats")
    finally:
        os.kill(child.pid, signal.SIGCONT)
    wait_until(lambda: env.status(NAME) == "Connected", "Connected after the partition")


def test_the_deployments_probes_reach_the_agents_health_endpoints(env: LifecycleEnv) -> None:
    """The Deployment connect applied probes /livez and /readyz on the container
    port named "health", the port of the ConfigMap's health.listen; the agent
    started from that ConfigMap answers both with 200 while Connected (what the
    kubelet asks before it counts the pod live and ready)."""
    api = env.core().api_client
    deployment: dict[str, Any] = api.sanitize_for_serialization(
        k8s.AppsV1Api(api).read_namespaced_deployment("arc-agent", "arc-system"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
             for kind in ("livenessProbe", "readinessProbe")}
    assert paths == {"livenessProbe": ("/livez", "health"), "readinessProbe": ("/readyz", "health")}
    _files, config = env.read_agent_objects()
    assert config["health"]["listen"].rsplit(":", 1)[1] == str(ports["health"])
    # Here the agent listens on loopback, any port (tests/support/lifecycle.py): its log says where.
    agent = env.children[NAME]
    needle = "agent health listener url="
    line = next((ln for ln in agent.err.seen if needle in ln), None) or agent.err.wait_for(needle)
    url = line.split(needle, 1)[1].split()[0]
    wait_until(lambda: env.status(NAME) == "Connected", "Connected")
    # Readiness also needs kube-aad-proxy's check of the API server, which the
    # kubelet would re-probe: wait for it as the kubelet's retries would.
    for path, _port in paths.values():
        answers: list[tuple[int, str]] = []

        def answered_200(path: str = path, answers: list[tuple[int, str]] = answers) -> bool:
            answers.append(_http_get(url + path))
            return answers[-1][0] == 200
        try:
            wait_until(answered_200, f"{path} to answer 200")
        except AssertionError:
            raise AssertionError(f"{path} answered {answers[-1]}") from None


def _http_get(url: str) -> tuple[int, str]:
    """Status and body of ``GET url`` (an error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")


def test_delete_without_yes_on_non_interactive_stdin_refuses(env: LifecycleEnv) -> None:
    """No -y and no terminal: one line, non-zero, nothing deleted."""
    p = env.arcctl("delete", "-n", NAME, "-g", GROUP, "--kube-config", env.kubeconfig)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "-y" in p.stderr
    assert env.status(NAME) == "Connected"


async def _agent_dial(env: LifecycleEnv, key_pem: str, cluster_id: str) -> int:
    token = sign_agent_assertion(key_pem.encode(), cluster_id=cluster_id,
                                 audience=f"{env.demo.relay_url}/agent/v1/connect")
    ctx = client_ssl_context(Path(env.relay_ca_file).read_bytes())
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(f"{env.demo.relay_url}/agent/v1/connect", ssl=ctx,
                                       headers={"Authorization": f"Bearer {token}"},
                                       protocols=["arc-tunnel.v1"])
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


def test_connect_adopts_a_hand_made_object_only_when_asked(env: LifecycleEnv) -> None:
    """An object with the agent's name that someone else made (here: the
    ServiceAccount's owner annotation removed, as for a hand-made one) is
    named and refused; --adopt takes it over."""
    core = env.core()
    patch = {"metadata": {"annotations": {"cluster-connect.io/cluster-id": None}}}
    core.patch_namespaced_service_account("arc-agent", "arc-system", patch)
    code, out, err = connect(env)
    assert code != 0 and "ServiceAccount arc-system/arc-agent (not made by arcctl)" in err, err + out
    code, out, err = connect(env, "--adopt")
    assert code == 0, err + out
    assert "took over ServiceAccount arc-system/arc-agent (owner: none)" in out
    sa = core.read_namespaced_service_account("arc-agent", "arc-system")
    assert sa.metadata.annotations["cluster-connect.io/cluster-id"] == f"{GROUP}/{NAME}"


def test_delete_of_another_name_removes_nothing_of_this_install(env: LifecycleEnv) -> None:
    """`arcctl delete` of a second registered name, against the kube context where
    edge-1's agent runs (the issue's broken cluster): one line naming the agent
    that runs there and --kube-context, nothing deleted; with --force only that
    name's registration goes, and edge-1's objects stay untouched."""
    other = generate_key_pair(f"{GROUP}/bystander").certificate_pem.decode()
    asyncio.run(env.admin_call(lambda api: api.put_cluster(GROUP, "bystander", {
        "agentPublicKeyCertificate": other})))
    core = env.core()
    before = core.read_namespaced_config_map("arc-agent", "arc-system").metadata.resource_version
    p = env.arcctl("delete", "-n", "bystander", "-g", GROUP, "--kube-config", env.kubeconfig, "-y")
    assert p.returncode != 0, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"runs the agent of {GROUP}/{NAME}, not {GROUP}/bystander: check --kube-context" in lines[0]
    assert "nothing was deleted" in lines[0], lines[0]
    assert env.registration("bystander")["name"] == "bystander"
    p = env.arcctl("delete", "-n", "bystander", "-g", GROUP, "--kube-config", env.kubeconfig, "-y", "--force")
    assert p.returncode == 0, p.stderr
    assert "cluster: skipped (the Kubernetes cluster at" in p.stdout, p.stdout
    assert "bystander" not in [c["name"] for c in json_out(env.arcctl("list", "-g", GROUP))]
    assert core.read_namespaced_config_map("arc-agent", "arc-system").metadata.resource_version == before
    assert core.read_namespaced_service_account("arc-agent", "arc-system").metadata.annotations[
        "cluster-connect.io/cluster-id"] == f"{GROUP}/{NAME}"


def test_delete_removes_objects_registration_and_key(env: LifecycleEnv) -> None:
    """delete -y removes the objects and the registration; the old agent key is
    refused by the relay afterwards."""
    files, _ = env.read_agent_objects()
    p = env.arcctl("delete", "-n", NAME, "-g", GROUP, "--kube-config", env.kubeconfig, "-y")
    assert p.returncode == 0, p.stderr
    assert "Deployment arc-agent deleted" in p.stdout and "ClusterRole arc-agent-arc-system deleted" in p.stdout
    core = env.core()
    assert "arc-system" not in [n.metadata.name for n in core.list_namespace().items]
    listed = json_out(env.arcctl("list", "-g", GROUP))
    assert NAME not in [c["name"] for c in listed]
    assert asyncio.run(_agent_dial(env, files["agent.key"], f"{GROUP}/{NAME}")) == 401
    env.stop_agent(NAME)


def test_delete_force_with_unreachable_cluster_then_connect_cleans_up(env: LifecycleEnv) -> None:
    """--force removes the registration although the cluster is unreachable;
    without --force nothing is deleted; a later connect replaces the leftovers
    with fresh keys."""
    code, out, err = connect(env)
    assert code == 0, err
    old_files, _ = env.read_agent_objects()
    dead = env.base / "kubeconfig-dead"
    doc = yaml.safe_load(Path(env.kubeconfig).read_text())
    doc["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # discard port: refused
    dead.write_text(yaml.safe_dump(doc))
    p = env.arcctl("delete", "-n", NAME, "-g", GROUP, "--kube-config", str(dead), "-y")
    assert p.returncode != 0 and "--force" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert env.status(NAME) == "Connecting"
    p = env.arcctl("delete", "-n", NAME, "-g", GROUP, "--kube-config", str(dead), "-y", "--force")
    assert p.returncode == 0, p.stderr
    assert "skipped" in p.stdout
    assert NAME not in [c["name"] for c in json_out(env.arcctl("list", "-g", GROUP))]
    code, out, err = connect(env)
    assert code == 0, err
    assert "leftovers" in out
    new_files, _ = env.read_agent_objects()
    assert new_files["agent.crt"] != old_files["agent.crt"]
    assert asyncio.run(_agent_dial(env, old_files["agent.key"], f"{GROUP}/{NAME}")) == 401


def test_move_cluster_to_another_relay(env: LifecycleEnv) -> None:
    """The README how-to: export role assignments from the old relay, import them
    into the new one, connect against the new relay; the agent keeps its key and
    connects to the new relay."""
    url_b, admin_b, alice_b = env.start_second_relay()
    exported = env.base / "roles.yaml"
    p = env.arcctl("role", "export", "-o", "yaml", "--file", str(exported),
                   config=env.base / "admin-config.yaml")
    assert p.returncode == 0, p.stderr
    p = env.arcctl("role", "import", "--file", str(exported), config=admin_b)
    assert p.returncode == 0, p.stderr
    old_files, _ = env.read_agent_objects()
    p = env.arcctl("connect", "-n", NAME, "-g", GROUP, "--kube-config", env.kubeconfig, "--no-wait",
                   config=alice_b)
    assert p.returncode == 0, p.stderr + p.stdout
    assert "moving from" in p.stdout and "Deployment arc-agent unchanged (restarted" in p.stdout
    deployment = k8s.AppsV1Api(env.core().api_client).read_namespaced_deployment("arc-agent", "arc-system")
    assert "kubectl.kubernetes.io/restartedAt" in (deployment.spec.template.metadata.annotations or {})
    files, config = env.read_agent_objects()
    assert files["agent.key"] == old_files["agent.key"] and config["relay"]["url"] == url_b
    env.start_agent(NAME)
    shown = wait_until(lambda: (s := json_out(env.arcctl("show", "-n", NAME, "-g", GROUP, config=alice_b)))
                     ["connectivityStatus"] == "Connected" and s, "Connected at the new relay")
    assert shown["agentPublicKeyCertificateSha256"] == fingerprint_sha256(files["agent.crt"].encode())
    p = env.arcctl("delete", "-n", NAME, "-g", GROUP, "--kube-config", env.kubeconfig, "-y")
    assert p.returncode == 0, p.stderr
    assert "left in place" in p.stdout
    assert NAME not in [c["name"] for c in json_out(env.arcctl("list", "-g", GROUP))]
    assert json_out(env.arcctl("show", "-n", NAME, "-g", GROUP, config=alice_b))["connectivityStatus"] == "Connected"
