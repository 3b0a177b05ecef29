"""The relay's Helm chart (deploy/helm/cluster-connect-relay), rendered without
Helm (tests/support/helm_chart.py: Helm's semantics for the constructs our
charts use): three replicas, a PodDisruptionBudget, probes on the health
listener, a grace period longer than preStop + agent move + drain, the
restricted Pod Security Standard, and a relay config the relay's own schema
accepts. deploy/rendered/relay.yaml is the chart rendered with EXAMPLE_VALUES
(regenerate: ``python -m tests.deploy.test_relay_chart > deploy/rendered/relay.yaml``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import relay_config_from_file
from relay.config_schema import RelayFile
from tests.client.test_pod_security import pod_specs, restricted_violations
from tests.support.helm_chart import RequiredValueMissing, render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cluster-connect-relay"
RENDERED = ROOT / "deploy" / "rendered" / "relay.yaml"
NAMESPACE = "arc-relay"

# What an operator fills in (every required value), as in README "Running more than one relay".
FILLED = {
    "publicUrl": "https://relay.example.net",
    "tls": {"secretName": "arc-relay-tls"},
    "database": {"url": "postgresql://relay@postgres.db.svc:5432/relay",
                 "passwordSecret": {"name": "arc-relay-db"}},
    "presence": {"redisUrl": "redis://redis.db.svc:6379/0"},
    "peering": {"secretName": "arc-relay-peering"},
    "oidc": {"issuer": "https://login.example.net/tenant/v2.0"},
    "admins": ["72456920-99c3-4dff-ae71-fa469274d15a"],
}
REQUIRED = ("publicUrl", "tls.secretName", "database.url", "database.passwordSecret.name",
            "presence.redisUrl", "peering.secretName", "oidc.issuer")


def _template() -> str:
    return (CHART / "templates" / "relay.yaml").read_text()


def _defaults() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def example_values() -> dict[str, Any]:
    """values.yaml with the required values filled in."""
    return _merge(_defaults(), FILLED)


def rendered_example() -> str:
    """deploy/rendered/relay.yaml: the chart rendered with ``example_values()``."""
    docs = render(_template(), example_values(), NAMESPACE)
    return "# Generated: python -m tests.deploy.test_relay_chart > deploy/rendered/relay.yaml\n" + \
        yaml.safe_dump_all(docs, sort_keys=False)


def _kind(docs: list[dict[str, Any]], kind: str, name: str = "arc-relay") -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_relay_chart_runs_three_replicas_with_a_pdb_probes_and_a_long_enough_grace() -> None:
    """replicas 3; PDB over the same pods; readiness /readyz and liveness /livez
    on the port the config's health listener serves; preStop sleep; the grace
    period exceeds preStop + agent_move_seconds + drain_seconds."""
    values = example_values()
    docs = render(_template(), values, NAMESPACE)
    sts = _kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    pdb = _kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = yaml.safe_load(_kind(docs, "ConfigMap")["data"]["relay.yaml"])
    assert config["health"]["listen"].endswith(f":{ports['health']}")
    assert config["listen"].endswith(f":{ports['relay']}")
    assert config["peering"]["listen"].endswith(f":{ports['peering']}")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = config["limits"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + drain["agent_move_seconds"] + drain["drain_seconds"]
    assert drain["agent_move_seconds"] == values["drain"]["agentMoveSeconds"]
    # Replica ids and peer addresses: each pod's FQDN through the headless Service.
    assert pod["spec"]["setHostnameAsFQDN"] is True
    peers = _kind(docs, "Service", "arc-relay-peers")
    assert sts["spec"]["serviceName"] == "arc-relay-peers"
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    service = _kind(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "relay"


def test_relay_chart_pods_pass_the_restricted_pod_security_standard() -> None:
    """Every pod template the chart renders breaks no control of "restricted"."""
    docs = render(_template(), example_values(), NAMESPACE)
    specs = pod_specs(docs)
    assert specs
    for spec in specs:
        assert restricted_violations(spec) == []
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_relay_chart_config_is_accepted_by_the_relay_schema(tmp_path: Path) -> None:
    """The ConfigMap's relay.yaml loads as a relay config: PostgreSQL with the
    password file from the Secret's mount, Redis presence, peering, the issuer."""
    docs = render(_template(), example_values(), NAMESPACE)
    text = _kind(docs, "ConfigMap")["data"]["relay.yaml"]
    config = relay_config_from_file(RelayFile.model_validate(yaml.safe_load(text)), tmp_path, "relay.yaml")
    assert config.database_url == FILLED["database"]["url"]  # type: ignore[index]
    sts = _kind(docs, "StatefulSet")
    mounts = {m["name"]: m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert config.database_password_file == f"{mounts['database']}/password"
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["database"]["secret"]["secretName"] == "arc-relay-db"
    assert volumes["database"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert config.presence.redis_url == FILLED["presence"]["redisUrl"]  # type: ignore[index]
    assert config.peering is not None and config.peering.ca_file.startswith(mounts["peering"])
    assert config.public_url == FILLED["publicUrl"]
    assert config.admins == tuple(FILLED["admins"])


@pytest.mark.parametrize("path", REQUIRED)
def test_relay_chart_refuses_to_render_without_a_required_value(path: str) -> None:
    """Each required value left empty fails, naming it, as `helm install` would."""
    values = example_values()
    node = values
    *parents, leaf = path.split(".")
    for part in parents:
        node[part] = dict(node[part])
        node = node[part]
    node[leaf] = ""
    with pytest.raises(RequiredValueMissing, match=rf"^{re.escape(path)} is required: "):
        render(_template(), values, NAMESPACE)


def test_relay_values_document_every_value_the_template_reads() -> None:
    """Every ``.Values.x`` the template reads is in values.yaml under a comment."""
    defaults = _defaults()
    text = (CHART / "values.yaml").read_text()
    for path in set(re.findall(r"\.Values\.([\w.]+)", _template())):
        node: Any = defaults
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} missing from values.yaml"
            node = node[part]
    # Routes nowhere by default: no example relay, database or Redis.
    assert (defaults["publicUrl"], defaults["database"]["url"], defaults["presence"]["redisUrl"]) == ("", "", "")
    assert "example" not in text


def test_rendered_relay_manifests_are_the_chart_rendered_with_the_example_values() -> None:
    """deploy/rendered/relay.yaml (plain manifests for kubectl apply) is current."""
    assert RENDERED.read_text() == rendered_example(), \
        "regenerate: python -m tests.deploy.test_relay_chart > deploy/rendered/relay.yaml"


if __name__ == "__main__":
    print(rendered_example(), end="")
