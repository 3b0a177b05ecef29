"""Generate the Helm chart ``deploy/helm/cluster-connect-agent`` and the
rendered example ``deploy/rendered/agent.yaml`` from ``client.manifests``.

Helm is not installable here (no pip package, no Debian package), so the chart
is not hand-written: its template is the builder's output with sentinel
values, each sentinel replaced by the Go template action that yields the same
text (``quote``/``b64enc``/``if``). The rendered example is the builder's
output for :data:`EXAMPLE`; ``tests/client/test_manifests.py`` checks that both
checked-in files are what this module generates and that
``arcctl connect --dry-run`` prints the rendered example.

Run ``python -m client.manifests_chart`` to regenerate after changing the builder.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from client.arcctl_central_rbac import CENTRAL_RBAC_SUFFIX, with_central_rbac_rights
from client.manifests import REQUIRED_VALUES, AgentValues, build_manifests, dump_manifests

__all__ = ["EXAMPLE", "VALUE_PATHS", "chart_files", "chart_template", "rendered_example"]

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = Path("deploy/helm/cluster-connect-agent")
RENDERED = Path("deploy/rendered/agent.yaml")
CHART_VERSION = "0.1.0"
APP_VERSION = "0.1.0"

# AgentValues field -> path under .Values.
VALUE_PATHS: dict[str, str] = {
    "cluster_name": "cluster.name",
    "resource_group": "cluster.resourceGroup",
    "relay_url": "relay.url",
    "oidc_issuer": "oidc.issuer",
    "oidc_audience": "oidc.audience",
    "impersonate_with": "impersonateWith",
    "image": "image",
    "proxy_https": "proxy.https",
    "proxy_http": "proxy.http",
    "no_proxy": "proxy.noProxy",
    "agent_key": "secret.agentKey",
    "agent_cert": "secret.agentCert",
    "serving_cert": "secret.servingCert",
    "serving_key": "secret.servingKey",
    "serving_ca": "secret.servingCaCert",
    "relay_ca": "secret.relayCaCert",
    "proxy_ca": "secret.proxyCaCert",
    "oidc_ca": "secret.oidcCaCert",
    "resources": "resources",
    "node_selector": "nodeSelector",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "image_pull_secrets": "imagePullSecrets",
}

# The fixed values of the rendered example (and of the dry-run test). The
# Secret's PEM values stay empty, as in ``connect --dry-run``.
EXAMPLE = AgentValues(
    cluster_name="demo", resource_group="default", relay_url="https://relay.example.com",
    oidc_issuer="https://login.example.com/00000000-0000-0000-0000-000000000000/v2.0",
    oidc_audience="api://cluster-connect", proxy_https="http://proxy.example.com:3128",
    no_proxy="10.0.0.0/8,.svc.cluster.local",
)

_SENTINEL = re.compile(
    r'"@@(?:(b64):(\w+)|(if):(\w+):([^@"]+)|(required):(\w+)|(namespace)|(release_service)|(\w+))@@"')
# A structured value on a line of its own: present only when set (Helm's `with`).
_WITH_LINE = re.compile(r'^( *)(\w+): "@@with:(\w+)@@"$', re.MULTILINE)


def _required(name: str) -> str:
    return f'required "{VALUE_PATHS[name]} is required: {REQUIRED_VALUES[name]}" .Values.{VALUE_PATHS[name]}'


def _value(name: str) -> str:
    return _required(name) if name in REQUIRED_VALUES else f".Values.{VALUE_PATHS[name]}"


def _action(match: re.Match[str]) -> str:
    if match.group(1):
        return f"{{{{ {_value(match.group(2))} | b64enc | quote }}}}"
    if match.group(3):
        path = VALUE_PATHS[match.group(4)]
        return f'{{{{ if .Values.{path} }}}}"{match.group(5)}"{{{{ else }}}}""{{{{ end }}}}'
    if match.group(6):
        return f"{{{{ {_required(match.group(7))} | quote }}}}"
    if match.group(8):
        return "{{ .Release.Namespace | quote }}"
    if match.group(9):
        return "{{ .Release.Service | quote }}"
    return f"{{{{ .Values.{VALUE_PATHS[match.group(10)]} | quote }}}}"


def _with_block(match: re.Match[str]) -> str:
    indent, key, name = match.group(1), match.group(2), match.group(3)
    return (f"{indent}{{{{- with .Values.{VALUE_PATHS[name]} }}}}\n{indent}{key}:\n"
            f"{indent}  {{{{- toYaml . | nindent {len(indent) + 2} }}}}\n{indent}{{{{- end }}}}")


# A sentinel inside a longer string ("arc-agent-@@namespace@@"): its plain
# value, unquoted; only names (DNS labels, no quotes) are embedded this way.
_EMBEDDED = re.compile(r"@@(?:required:)?(\w+)@@")


def _embedded(match: re.Match[str]) -> str:
    name = match.group(1)
    if name == "namespace":
        return "{{ .Release.Namespace }}"
    if name == "release_service":
        return "{{ .Release.Service }}"
    return f"{{{{ .Values.{VALUE_PATHS[name]} }}}}"


# The value that adds the central-RBAC pair (what --enable-central-rbac adds).
CENTRAL_RBAC_VALUE = "centralRbac.enabled"


def _documents() -> str:
    """The builder's manifests with the central-RBAC pair, that pair only
    under ``if .Values.centralRbac.enabled`` (one block per document)."""
    out = []
    for obj in with_central_rbac_rights(build_manifests(AgentValues.chart_values())):
        doc = dump_manifests([obj])
        if obj["metadata"]["name"].endswith(CENTRAL_RBAC_SUFFIX):
            doc = f"{{{{- if .Values.{CENTRAL_RBAC_VALUE} }}}}\n{doc}{{{{- end }}}}\n"
        out.append(doc)
    return "".join(out)


def chart_template() -> str:
    """``templates/agent.yaml``: the builder's manifests with Go template actions."""
    text = _documents()
    out = _EMBEDDED.sub(_embedded, _SENTINEL.sub(_action, _WITH_LINE.sub(_with_block, text)))
    if "@@" in out:
        raise ValueError("a sentinel was left in the chart template: extend _SENTINEL")
    header = "# Generated by `python -m client.manifests_chart` from client/manifests.py; do not edit.\n"
    return header + out


# values.yaml, key by key. Defaults come from AgentValues; what has no sane
# default is empty there and `required` in the template.
_VALUE_COMMENTS: dict[str, str] = {
    "cluster_name": "Required. The cluster's name as registered at the relay.",
    "resource_group": "The cluster's resource group at the relay.",
    "relay_url": "Required. The relay's https URL as seen from inside the cluster (not loopback).",
    "oidc_issuer": "Required. The OIDC issuer whose tokens kube-aad-proxy accepts.",
    "oidc_audience": "The audience those tokens carry.",
    "impersonate_with": "Claim that names the Kubernetes user: oid (immutable) or upn.",
    "image": "The agent image.",
    "proxy_https": "Outbound proxy for the relay connection, e.g. http://proxy:3128 (empty: direct).",
    "proxy_http": "Proxy for plain-http destinations (rarely needed).",
    "no_proxy": "Destinations that bypass the proxy: hosts, domains (.svc.cluster.local), CIDRs.",
    "agent_key": "Required. PEM: the agent's private key. `arcctl connect --helm-values FILE` writes\n"
                 "every secret.* value after registering the cluster at the relay.",
    "agent_cert": "Required. PEM: the agent's certificate, registered at the relay.",
    "serving_cert": "Required. PEM: kube-aad-proxy's serving certificate (end-to-end TLS ends here).",
    "serving_key": "Required. PEM: its private key.",
    "serving_ca": "PEM: the CA of the serving certificate (what arc-proxy pins).",
    "relay_ca": "PEM: CA of the relay's certificate, when it is not publicly trusted.",
    "proxy_ca": "PEM: CA of a TLS-intercepting proxy.",
    "oidc_ca": "PEM: CA of the OIDC issuer, when it is not publicly trusted.",
    "resources": "Container resources (the agent is one Python process, ~60 MiB at rest).",
    "node_selector": "Pod placement, as in a pod spec.",
    "tolerations": "",
    "affinity": "",
    "image_pull_secrets": "Secrets to pull the image from a private registry: [{name: regcred}].",
}


def values_yaml() -> str:
    """``values.yaml``: every value under its comment; required ones empty."""
    defaults = AgentValues(cluster_name="", resource_group="default", relay_url="", oidc_issuer="")
    lines = ["# Values of the cluster-connect agent chart. Register the cluster and get the",
             "# required values in one step: arcctl connect -n NAME --helm-values values.yaml",
             "# then: helm install arc-agent deploy/helm/cluster-connect-agent -n arc-system \\",
             "#         --create-namespace -f values.yaml"]
    parent = ""
    for name, path in VALUE_PATHS.items():
        *parents, leaf = path.split(".")  # at most one parent level
        if parents and parents[0] != parent:
            lines.append(f"{parents[0]}:")
        parent = parents[0] if parents else ""
        indent = "  " if parents else ""
        comment = _VALUE_COMMENTS[name]
        lines.extend(f"{indent}# {c}" for c in comment.splitlines() if comment)
        value = getattr(defaults, name)
        dumped = yaml.safe_dump({leaf: list(value) if isinstance(value, tuple) else value},
                                sort_keys=False, width=10_000)
        lines.extend(indent + line for line in dumped.splitlines())
    lines += ["centralRbac:",
              "  # Also grant the agent RBAC write with bind and escalate (a second ClusterRole and",
              "  # ClusterRoleBinding, as `arcctl connect --enable-central-rbac`): needed only when",
              "  # central Kubernetes roles are on for this cluster (docs/central-rbac.md).",
              "  enabled: false"]
    return "\n".join(lines) + "\n"


NOTES = """cluster-connect agent {{ .Release.Name }} installed in namespace {{ .Release.Namespace }}.

1. Wait for the agent to connect to the relay ({{ .Values.relay.url }}):
     kubectl -n {{ .Release.Namespace }} rollout status deployment/arc-agent
     arcctl show -n {{ .Values.cluster.name }}       # connectivityStatus: Connected
2. Reach the cluster from anywhere through the relay:
     arc-proxy -n {{ .Values.cluster.name }}          # then kubectl in another shell
3. Who may do what inside the cluster is this cluster's own RBAC: bind your users
   or groups (as kube-aad-proxy names them) to roles, e.g.
     kubectl create clusterrolebinding me-view --clusterrole=view --user=<oid>
If the pod is not Ready: kubectl -n {{ .Release.Namespace }} logs deployment/arc-agent
"""


def rendered_example() -> str:
    """What the chart renders (and ``connect --dry-run`` prints) for :data:`EXAMPLE`."""
    return dump_manifests(build_manifests(EXAMPLE))


def chart_files() -> dict[Path, str]:
    """Every generated file, relative to the repository root."""
    chart = (f"apiVersion: v2\nname: cluster-connect-agent\ndescription: The cluster-connect agent "
             f"(arc-agent with kube-aad-proxy)\ntype: application\nversion: {CHART_VERSION}\n"
             f'appVersion: "{APP_VERSION}"\n')
    return {
        CHART_DIR / "Chart.yaml": chart,
        CHART_DIR / "values.yaml": values_yaml(),
        CHART_DIR / "templates" / "agent.yaml": chart_template(),
        CHART_DIR / "templates" / "NOTES.txt": NOTES,
        RENDERED: rendered_example(),
    }


def main() -> int:
    """Write the chart and the rendered example under the repository root."""
    for rel, text in chart_files().items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
