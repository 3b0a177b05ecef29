"""The agent manifests: one builder behind ``arcctl connect``, its ``--dry-run``,
the Helm chart and the rendered example under ``deploy/``.

Helm is not installable here (no pip package; ``apt-cache policy helm``: none),
so the chart's template is generated from the builder (client.manifests_chart)
and these tests pin the three together: the checked-in chart files are what the
generator makes, and ``arcctl connect --dry-run`` with the example's values
prints exactly ``deploy/rendered/agent.yaml``.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from client.arcctl import build_parser
from client.arcctl_connect import InCluster, choose_keys, fresh_keys, unreachable_relay_reason
from client.errors import CliError
from client.kube_apply import is_subset
from client.manifests import AgentValues, agent_config, build_manifests, dump_manifests, object_path
from client.manifests_chart import EXAMPLE, chart_files, chart_template

ROOT = Path(__file__).resolve().parents[2]


def test_chart_files_are_what_the_generator_makes() -> None:
    """deploy/helm/... and deploy/rendered/agent.yaml are up to date
    (regenerate with ``python -m client.manifests_chart``)."""
    for rel, text in chart_files().items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run python -m client.manifests_chart"


def test_chart_template_has_an_action_for_every_value() -> None:
    """Every user-supplied value in the template is a Go template action; none
    of the example's concrete values leaks into it."""
    template = chart_template()
    for needle in (".Values.cluster.name | quote", ".Values.relay.url | quote",
                   ".Values.secret.agentKey | b64enc | quote", "if .Values.secret.proxyCaCert"):
        assert needle in template
    for leaked in (EXAMPLE.relay_url, EXAMPLE.oidc_issuer, EXAMPLE.proxy_https):
        assert leaked not in template


def test_dry_run_prints_the_rendered_example(tmp_path: Path) -> None:
    """``arcctl connect --dry-run`` with the example's values prints
    deploy/rendered/agent.yaml byte for byte."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": EXAMPLE.relay_url}, "resource_group": "default",
                                      "auth": {"token_endpoint": "https://login.example.com/token"}}))
    p = subprocess.run(
        [sys.executable, "-m", "client.arcctl", "connect", "-n", EXAMPLE.cluster_name, "--dry-run",
         "--oidc-issuer", EXAMPLE.oidc_issuer, "--oidc-audience", EXAMPLE.oidc_audience,
         "--proxy-https", EXAMPLE.proxy_https, "--proxy-skip-range", EXAMPLE.no_proxy],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARC_CONFIG": str(config)})
    assert p.returncode == 0, p.stderr
    assert p.stdout == (ROOT / "deploy/rendered/agent.yaml").read_text()


def test_manifests_carry_config_and_secret() -> None:
    """The ConfigMap holds the agent config with proxy settings; the Secret
    holds base64 PEMs; CA paths are set only for CAs that are present."""
    values = AgentValues("c1", "rg", "https://relay:8443", "https://idp/v2.0", proxy_https="http://p:3128",
                         no_proxy="10.0.0.0/8", agent_key="KEY", proxy_ca="PROXYCA")
    docs = {d["kind"]: d for d in yaml.safe_load_all(dump_manifests(build_manifests(values)))}
    config = yaml.safe_load(docs["ConfigMap"]["data"]["agent.yaml"])
    assert config == agent_config(values)
    assert config["proxy"] == {"https": "http://p:3128", "http": "", "no_proxy": "10.0.0.0/8",
                               "ca_file": "/etc/cluster-connect/secret/proxy-ca.crt"}
    assert config["relay"]["ca_file"] == ""
    assert base64.b64decode(docs["Secret"]["data"]["agent.key"]) == b"KEY"
    assert docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--config", "/etc/cluster-connect/config/agent.yaml"]
    assert object_path(docs["Deployment"]) == "/apis/apps/v1/namespaces/arc-system/deployments/arc-agent"
    assert object_path(docs["ClusterRole"], collection=True) == "/apis/rbac.authorization.k8s.io/v1/clusterroles"


def test_later_of_proxy_cert_and_custom_ca_cert_wins() -> None:
    """--proxy-cert and --custom-ca-cert are one option: the later one wins."""
    parse = build_parser().parse_args
    args = parse(["connect", "-n", "x", "--proxy-cert", "a.pem", "--custom-ca-cert", "b.pem"])
    assert args.proxy_cert == "b.pem"
    args = parse(["connect", "-n", "x", "--custom-ca-cert", "b.pem", "--proxy-cert", "a.pem"])
    assert args.proxy_cert == "a.pem"


def test_is_subset_ignores_server_defaults_but_not_changes() -> None:
    """Fields the server adds do not count as a difference; changed or
    removed list items do."""
    want = {"spec": {"containers": [{"name": "a", "args": ["x"]}]}}
    assert is_subset(want, {"spec": {"containers": [{"name": "a", "args": ["x"], "imagePullPolicy": "Always"}]},
                            "status": {}})
    assert not is_subset(want, {"spec": {"containers": [{"name": "a", "args": ["y"]}]}})
    assert not is_subset(want, {"spec": {"containers": []}})


def _found(values: AgentValues, relay_url: str, cid: str = "rg/c1") -> InCluster:
    secret = {"agent.key": values.agent_key, "agent.crt": values.agent_cert,
              "serving.crt": values.serving_cert, "serving.key": values.serving_key,
              "serving-ca.crt": values.serving_ca}
    return InCluster(secret, relay_url, cid)


def test_choose_keys_reuses_refuses_moves_and_replaces() -> None:
    """Same cert registered: reuse; another cert: refused; unregistered at a
    new relay: move with the same key; unregistered at the same relay
    (after delete --force): fresh keys."""
    base = AgentValues("c1", "rg", "https://relay-a", "https://idp")
    keyed = fresh_keys(base)
    here = _found(keyed, "https://relay-a")
    values, note = choose_keys(base, {"agentPublicKeyCertificate": keyed.agent_cert}, here, "https://relay-a")
    assert values.agent_key == keyed.agent_key and "reusing" in note
    with pytest.raises(CliError, match="already registered"):
        choose_keys(base, {"agentPublicKeyCertificate": fresh_keys(base).agent_cert}, here, "https://relay-a")
    with pytest.raises(CliError, match="already registered"):
        choose_keys(base, {"agentPublicKeyCertificate": keyed.agent_cert}, None, "https://relay-a")
    values, note = choose_keys(base, None, here, "https://relay-b")
    assert values.agent_key == keyed.agent_key and "moving from https://relay-a" in note
    values, note = choose_keys(base, None, here, "https://relay-a")
    assert values.agent_key != keyed.agent_key and "leftovers" in note
    values, note = choose_keys(base, None, _found(keyed, "https://relay-a", "rg/other"), "https://relay-b")
    assert values.agent_key != keyed.agent_key


@pytest.mark.parametrize(("url", "reason"), [
    ("https://127.0.0.1:8443", "is a loopback address"),
    ("https://[::1]:8443", "is a loopback address"),
    ("https://localhost:8443", "is a loopback name"),
    ("https://169.254.10.1", "is a link-local address"),
    ("https://[fe80::1]:8443", "is a link-local address"),
    ("https://relay.example.com", None),
    ("https://10.0.0.5:8443", None),
])
def test_a_relay_url_a_pod_cannot_reach_is_named(url: str, reason: str | None) -> None:
    """connect warns about these (loopback and link-local: never the relay, seen from a pod)."""
    assert unreachable_relay_reason(url) == reason
