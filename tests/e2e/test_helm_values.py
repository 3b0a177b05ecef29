"""``arcctl connect --helm-values FILE`` end to end: register without touching
the cluster, write the chart's values (keys included, 0600), install the chart
as Helm would (rendered by tests/support/helm_chart.py: Helm is not
installable here), and the agent started from what the chart stored connects.

The tests of this module run in order and share one environment.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from certs import fingerprint_sha256
from client.kube_apply import KubeTarget
from client.manifests_chart import chart_template
from tests.support.helm_chart import render
from tests.support.lifecycle import GROUP, LifecycleEnv, json_out, running_lifecycle_env
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(120)

NAME = "helm-1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleEnv]:
    with running_lifecycle_env(tmp_path_factory.mktemp("helm")) as e:
        yield e


def helm_connect(env: LifecycleEnv, values: Path) -> tuple[int, str, str]:
    p = env.arcctl("connect", "-n", NAME, "-g", GROUP, "--kube-config", env.kubeconfig,
                   "--helm-values", str(values))
    return p.returncode, p.stdout, p.stderr


def test_helm_values_registers_and_writes_secret_values_without_touching_the_cluster(
        env: LifecycleEnv) -> None:
    values = env.base / "values.yaml"
    code, out, err = helm_connect(env, values)
    assert code == 0, err + out
    assert f"registered {GROUP}/{NAME}" in out and "helm install" in out
    # The relay of the tests listens on loopback: a pod could not reach it.
    assert "warning: the relay URL" in err and "loopback" in err
    assert stat.S_IMODE(values.stat().st_mode) == 0o600
    doc = yaml.safe_load(values.read_text())
    reg = env.registration(NAME)
    assert doc["secret"]["agentCert"].strip() == reg["agentPublicKeyCertificate"].strip()
    assert "PRIVATE KEY" in doc["secret"]["agentKey"]
    assert doc["cluster"] == {"name": NAME, "resourceGroup": GROUP}
    assert doc["relay"]["url"] == env.demo.relay_url
    # The fingerprint arc-proxy pins, for the admin to hand out (--ca-fingerprint).
    ca_fp = fingerprint_sha256(reg["servingCaCertificate"].encode())
    assert f"Serving CA of {GROUP}/{NAME}: sha256:{ca_fp}" in out
    assert "arc-system" not in [n.metadata.name for n in env.core().list_namespace().items]


def test_helm_values_again_with_the_same_file_changes_nothing(env: LifecycleEnv) -> None:
    values = env.base / "values.yaml"
    before = values.read_text()
    code, out, err = helm_connect(env, values)
    assert code == 0, err + out
    assert "reusing the agent key" in out and "unchanged" in out
    assert yaml.safe_load(values.read_text())["secret"] == yaml.safe_load(before)["secret"]


def test_helm_values_with_another_file_is_refused(env: LifecycleEnv) -> None:
    """The name is registered with a key the new file does not hold: refused,
    nothing written, the registration untouched."""
    other = env.base / "other.yaml"
    cert = env.registration(NAME)["agentPublicKeyCertificate"]
    code, _out, err = helm_connect(env, other)
    assert code != 0
    assert "already registered" in err and str(other) in err and "Traceback" not in err
    assert not other.exists()
    assert env.registration(NAME)["agentPublicKeyCertificate"] == cert


def test_chart_installed_with_those_values_runs_a_connected_agent(env: LifecycleEnv) -> None:
    """What `helm install -n arc-system --create-namespace -f values.yaml` creates,
    applied to the sandbox: the agent started from it connects."""
    values = yaml.safe_load((env.base / "values.yaml").read_text())
    target = KubeTarget(env.admin_kubeconfig)
    try:
        target.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "arc-system"}})
        for doc in render(chart_template(), values, "arc-system"):
            target.apply(doc)
    finally:
        target.close()
    env.start_agent(NAME)
    wait_until(lambda: env.status(NAME) == "Connected", "the chart's agent to connect")


def test_delete_leaves_the_helm_release_to_helm(env: LifecycleEnv) -> None:
    """arcctl delete removes the registration but not what Helm installed (it
    names each object and says to uninstall it there), nor the namespace that
    holds them."""
    p = env.arcctl("delete", "-n", NAME, "-g", GROUP, "--kube-config", env.kubeconfig, "-y")
    assert p.returncode == 0, p.stderr
    assert "Deployment arc-agent left alone (managed by Helm: uninstall it there)" in p.stdout
    assert "ClusterRole arc-agent-arc-system left alone (managed by Helm" in p.stdout
    assert "Namespace arc-system left alone" in p.stdout
    assert env.core().read_namespaced_config_map("arc-agent", "arc-system").metadata.name == "arc-agent"
    assert NAME not in [c["name"] for c in json_out(env.arcctl("list", "-g", GROUP))]
    env.stop_agent(NAME)


def test_dry_run_says_what_it_left_out(env: LifecycleEnv) -> None:
    """`connect --dry-run` says on stderr that nothing was registered or applied,
    which Secret keys it left empty and that the loopback relay URL cannot be
    reached from a pod; the manifests alone go to stdout."""
    p = env.arcctl("connect", "-n", "dry-1", "-g", GROUP, "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "dry run: nothing was registered or applied" in p.stderr
    assert "agent.key, agent.crt, serving.crt, serving.key" in p.stderr
    assert "loopback" in p.stderr
    assert p.stdout.startswith("---\n")


def test_helm_values_with_central_rbac_set_the_charts_value_and_render_the_rights(env: LifecycleEnv) -> None:
    """`--helm-values FILE --enable-central-rbac` writes `centralRbac.enabled: true`,
    so `helm install -f FILE` grants the agent the extra rights that a plain
    `connect --enable-central-rbac` applies (issue 18), and turns the mode on."""
    values = env.base / "values-central.yaml"
    p = env.arcctl("connect", "-n", "helm-central", "-g", GROUP, "--kube-config", env.kubeconfig,
                   "--helm-values", str(values), "--enable-central-rbac")
    assert p.returncode == 0, p.stderr + p.stdout
    doc = yaml.safe_load(values.read_text())
    assert doc["centralRbac"]["enabled"] is True
    rendered = render(chart_template(), doc, "arc-system")
    verbs = {v for d in rendered if d["kind"] == "ClusterRole" for rule in d.get("rules", [])
             for v in rule.get("verbs", [])}
    assert {"bind", "escalate"} <= verbs, verbs
    without = render(chart_template(), {**doc, "centralRbac": {"enabled": False}}, "arc-system")
    assert not {v for d in without if d["kind"] == "ClusterRole" for rule in d.get("rules", [])
                for v in rule.get("verbs", [])} & {"bind", "escalate"}
