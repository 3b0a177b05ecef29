"""The agent's manifests pass the "restricted" Pod Security Standard, and the
Helm chart installs what ``arcctl connect`` applies.

The checker below is the restricted profile of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (which
includes the baseline profile), control by control, applied to every
container of every pod template in what ``arcctl connect`` applies, what its
``--dry-run`` prints (deploy/rendered/agent.yaml) and what the chart renders.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.arcctl_connect import helm_values
from client.manifests import (
    MANAGED_BY_ARCCTL,
    NAMESPACE,
    OWNER_ANNOTATION,
    POD_SECURITY_LABELS,
    build_manifests,
    dump_manifests,
)
from client.manifests_chart import CHART_DIR, EXAMPLE, VALUE_PATHS, chart_template, values_yaml
from tests.support.helm_chart import RequiredValueMissing, render

ROOT = Path(__file__).resolve().parents[2]

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every control of the restricted profile that ``pod`` (a PodSpec) breaks."""
    bad: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = [*pod.get("containers", []), *pod.get("initContainers", []),
                  *pod.get("ephemeralContainers", [])]
    # Baseline.
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            bad.append(f"{host} is set")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("pod hostProcess")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad.append(f"unsafe sysctl {sysctl.get('name')}")
    # Restricted: volume types.
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {volume.get('name')} of type {sorted(kinds)}")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        bad.append("pod seccompProfile Unconfined")
    for c in containers:
        name = c.get("name")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{name}: hostProcess")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if not added <= BASELINE_CAPABILITIES or not added <= {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {sorted(added)}")
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: does not drop ALL capabilities")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{name}: procMount")
        for ctx in (psc, sc):
            se = ctx.get("seLinuxOptions") or {}
            if se.get("type") not in SELINUX_TYPES or se.get("user") or se.get("role"):
                bad.append(f"{name}: seLinuxOptions")
            apparmor = (ctx.get("appArmorProfile") or {}).get("type")
            if apparmor not in (None, "RuntimeDefault", "Localhost"):
                bad.append(f"{name}: appArmorProfile {apparmor}")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        run_as_non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile {seccomp!r}")
    return bad


def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [d["spec"]["template"]["spec"] for d in docs
             if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet")]
    specs += [d["spec"] for d in docs if d["kind"] == "Pod"]
    return specs


PLACED = dataclasses.replace(
    EXAMPLE, agent_key="KEY", agent_cert="CERT", serving_cert="SCERT", serving_key="SKEY",
    node_selector={"kubernetes.io/os": "linux"},
    tolerations=({"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"},),
    image_pull_secrets=({"name": "regcred"},))


def test_the_restricted_checker_catches_each_violation() -> None:
    """The checker is not vacuous: each single violation is reported."""
    good = pod_specs(build_manifests(EXAMPLE))[0]
    assert restricted_violations(good) == []
    breakers = {
        "privileged": lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        "allowPrivilegeEscalation": lambda p: p["containers"][0]["securityContext"].pop(
            "allowPrivilegeEscalation"),
        "drop ALL": lambda p: p["containers"][0]["securityContext"].pop("capabilities"),
        "adds capabilities": lambda p: p["containers"][0]["securityContext"]["capabilities"].update(
            add=["NET_ADMIN"]),
        "runAsNonRoot": lambda p: (p["securityContext"].pop("runAsNonRoot"),
                                   p["containers"][0]["securityContext"].pop("runAsNonRoot")),
        "runAsUser 0": lambda p: p["securityContext"].update(runAsUser=0),
        "seccompProfile": lambda p: p["securityContext"].pop("seccompProfile"),
        "hostNetwork": lambda p: p.update(hostNetwork=True),
        "volume": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPort": lambda p: p["containers"][0].update(ports=[{"containerPort": 1, "hostPort": 1}]),
    }
    for needle, breaker in breakers.items():
        pod = pod_specs(build_manifests(EXAMPLE))[0]
        breaker(pod)
        found = restricted_violations(pod)
        assert any(needle in line for line in found), (needle, found)


@pytest.mark.parametrize("source", ["arcctl connect", "deploy/rendered/agent.yaml", "helm chart"])
def test_every_agent_pod_passes_the_restricted_pod_security_standard(source: str) -> None:
    if source == "arcctl connect":
        docs = build_manifests(PLACED)
    elif source == "deploy/rendered/agent.yaml":
        docs = [d for d in yaml.safe_load_all((ROOT / "deploy/rendered/agent.yaml").read_text()) if d]
    else:
        docs = render(chart_template(), helm_values(PLACED), "arc-system")
    specs = pod_specs(docs)
    assert specs, "no pod template found"
    for spec in specs:
        assert spec["containers"], "a pod without containers"
        assert restricted_violations(spec) == []


def test_the_namespace_arcctl_creates_enforces_restricted() -> None:
    namespace = next(d for d in build_manifests(EXAMPLE) if d["kind"] == "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert POD_SECURITY_LABELS.items() <= namespace["metadata"]["labels"].items()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_chart_renders_what_arcctl_applies_in_the_release_namespace() -> None:
    """Rendered with the same values, the chart yields arcctl's objects except
    the Namespace (Helm's), each in the release's namespace."""
    def as_helm_installs(node: Any, ns: str) -> Any:
        if isinstance(node, dict):
            return {k: as_helm_installs(v, ns) for k, v in node.items()}
        if isinstance(node, list):
            return [as_helm_installs(v, ns) for v in node]
        replaced = {NAMESPACE: ns, f"arc-agent-{NAMESPACE}": f"arc-agent-{ns}", MANAGED_BY_ARCCTL: "Helm"}
        return replaced.get(node, node) if isinstance(node, str) else node

    rendered = render(chart_template(), helm_values(PLACED), "team-infra")
    applied = yaml.safe_load_all(dump_manifests(build_manifests(PLACED)))
    expected = [as_helm_installs(d, "team-infra") for d in applied if d["kind"] != "Namespace"]
    assert rendered == expected
    assert not any(d["kind"] == "Namespace" for d in rendered)
    for doc in rendered:
        meta = doc["metadata"]
        assert meta["annotations"][OWNER_ANNOTATION] == f"{PLACED.resource_group}/{PLACED.cluster_name}"
        assert meta.get("namespace", "team-infra") == "team-infra"
        assert meta["name"] in ("arc-agent", "arc-agent-team-infra")


def test_the_chart_refuses_to_install_without_required_values() -> None:
    """values.yaml's defaults leave out what has no sane default; the chart
    then fails naming the value, as `helm install` would print it."""
    defaults = yaml.safe_load(values_yaml())
    with pytest.raises(RequiredValueMissing, match=r"^secret\.agentKey is required: "):
        render(chart_template(), defaults, "arc-system")
    filled = helm_values(PLACED)
    render(chart_template(), filled, "arc-system")
    for path in ("cluster.name", "relay.url", "oidc.issuer", "secret.agentKey", "secret.servingKey"):
        parent, leaf = path.split(".")
        broken = {**filled, parent: {**filled[parent], leaf: ""}}
        with pytest.raises(RequiredValueMissing, match=rf"{path.replace('.', '[.]')} is required"):
            render(chart_template(), broken, "arc-system")


def test_values_yaml_defaults_route_nowhere_and_document_every_value() -> None:
    """No example proxy, relay or cluster name by default; every value the
    template reads is in values.yaml with a comment above it or its parent."""
    text = (ROOT / CHART_DIR / "values.yaml").read_text()
    assert text == values_yaml()
    defaults = yaml.safe_load(text)
    assert defaults["proxy"] == {"https": "", "http": "", "noProxy": ""}
    assert defaults["relay"]["url"] == "" and defaults["cluster"]["name"] == ""
    assert "example.com" not in text
    for path in VALUE_PATHS.values():
        node: Any = defaults
        for part in path.split("."):
            assert part in node, f"{path} missing from values.yaml"
            node = node[part]
    notes = (ROOT / CHART_DIR / "templates" / "NOTES.txt").read_text()
    assert "arc-proxy -n {{ .Values.cluster.name }}" in notes
