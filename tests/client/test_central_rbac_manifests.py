"""``arcctl connect --enable-central-rbac`` grants the agent the RBAC rights
central Kubernetes roles need (issue 18, item 3); without the flag the
manifests are unchanged (the rendered example stays exact)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from client.arcctl_central_rbac import CENTRAL_RBAC_SUFFIX, with_central_rbac_rights
from client.manifests import build_manifests
from client.manifests_chart import EXAMPLE

ROOT = Path(__file__).resolve().parents[2]


def test_central_rbac_rights_are_a_second_cluster_role_bound_to_the_agent() -> None:
    """Right after the agent's own ClusterRole/Binding: a ClusterRole with
    RBAC write, bind and escalate, bound to the same ServiceAccount, with the
    same ownership metadata; nothing else changes."""
    base = build_manifests(EXAMPLE)
    extended = with_central_rbac_rights(base)
    assert len(extended) == len(base) + 2
    role, binding = (o for o in extended if o["metadata"]["name"].endswith(CENTRAL_RBAC_SUFFIX))
    agent_role = next(o for o in base if o["kind"] == "ClusterRole")
    agent_binding = next(o for o in base if o["kind"] == "ClusterRoleBinding")
    assert role["kind"] == "ClusterRole" and binding["kind"] == "ClusterRoleBinding"
    assert {"bind", "escalate", "create", "delete"} <= set(role["rules"][0]["verbs"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == agent_binding["subjects"]
    assert role["metadata"]["annotations"] == agent_role["metadata"]["annotations"]
    assert [o for o in extended if not o["metadata"]["name"].endswith(CENTRAL_RBAC_SUFFIX)] == base


def test_connect_dry_run_with_enable_central_rbac_prints_the_rights(tmp_path: Path) -> None:
    """``arcctl connect --dry-run --enable-central-rbac`` prints the extra pair."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": EXAMPLE.relay_url}, "resource_group": "default",
                                      "auth": {"token_endpoint": "https://login.example.com/token"}}))
    p = subprocess.run(
        [sys.executable, "-m", "client.arcctl", "connect", "-n", EXAMPLE.cluster_name, "--dry-run",
         "--enable-central-rbac", "--oidc-issuer", EXAMPLE.oidc_issuer, "--oidc-audience", EXAMPLE.oidc_audience],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARC_CONFIG": str(config)})
    assert p.returncode == 0, p.stderr
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    names = [d["metadata"]["name"] for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert sum(n.endswith(CENTRAL_RBAC_SUFFIX) for n in names) == 2, names


@pytest.mark.parametrize("namespace", ["arc-system", "team-infra"])
def test_helm_chart_central_rbac_enabled_renders_the_pair_as_connect_does(namespace: str) -> None:
    """``centralRbac.enabled: true`` renders exactly the objects of
    ``arcctl connect --enable-central-rbac`` (the Namespace aside, Helm's),
    in the release namespace; the default (false) renders none of the pair;
    every pod still passes the restricted Pod Security Standard."""
    from client.arcctl_connect import helm_values
    from client.manifests_chart import CHART_DIR, chart_template
    from tests.client.test_pod_security import PLACED, pod_specs, restricted_violations
    from tests.support.helm_chart import render

    defaults = yaml.safe_load((ROOT / CHART_DIR / "values.yaml").read_text())
    assert defaults["centralRbac"] == {"enabled": False}
    values = helm_values(PLACED)
    off = render(chart_template(), {**values, "centralRbac": {"enabled": False}}, namespace)
    assert render(chart_template(), values, namespace) == off  # the value left out: off
    on = render(chart_template(), {**values, "centralRbac": {"enabled": True}}, namespace)
    pair = [o for o in on if o["metadata"]["name"].endswith(CENTRAL_RBAC_SUFFIX)]
    assert not any(o["metadata"]["name"].endswith(CENTRAL_RBAC_SUFFIX) for o in off)
    assert [o for o in on if o not in pair] == off
    connect = [o for o in with_central_rbac_rights(build_manifests(PLACED))
               if o["metadata"]["name"].endswith(CENTRAL_RBAC_SUFFIX)]
    assert [o["kind"] for o in pair] == [o["kind"] for o in connect] == ["ClusterRole", "ClusterRoleBinding"]
    assert pair[0]["rules"] == connect[0]["rules"]
    assert pair[0]["metadata"]["name"] == pair[1]["roleRef"]["name"] == f"arc-agent-{namespace}{CENTRAL_RBAC_SUFFIX}"
    assert pair[1]["subjects"] == [{"kind": "ServiceAccount", "name": "arc-agent", "namespace": namespace}]
    assert pair[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for spec in pod_specs(on):
        assert restricted_violations(spec) == []
