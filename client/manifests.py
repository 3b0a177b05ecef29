"""The agent's Kubernetes manifests, built from one set of values.

``arcctl connect`` applies them, ``arcctl connect --dry-run`` prints them, and
the Helm chart under ``deploy/helm/cluster-connect-agent`` is generated from the
same builder (``client.manifests_chart``), so the three cannot drift apart.

Theory of operation: :func:`build_manifests` turns :class:`AgentValues` into
plain dicts. Every value that comes from the user goes through one of three
small helpers (:func:`_v`, :func:`_b64`, :func:`_path_if`); in chart mode they
emit sentinels that ``client.manifests_chart`` turns into Go template actions,
in normal mode they emit the value itself. String values are always
double-quoted in the YAML so that a sentinel and Helm's ``quote`` produce the
same text.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, fields
from typing import Any

import yaml

__all__ = [
    "AGENT_NAME", "CONFIG_PATH", "DEFAULT_IMAGE", "NAMESPACE", "SECRET_DIR", "SECRET_KEYS",
    "AgentValues", "agent_config", "build_manifests", "dump_manifests", "object_path",
]

NAMESPACE = "arc-system"
AGENT_NAME = "arc-agent"
DEFAULT_IMAGE = "ghcr.io/cluster-connect/arc-agent:0.1.0"
CONFIG_DIR = "/etc/cluster-connect/config"
CONFIG_PATH = f"{CONFIG_DIR}/agent.yaml"
SECRET_DIR = "/etc/cluster-connect/secret"
# In-cluster API server access, as every pod gets it from its ServiceAccount.
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
IN_CLUSTER_API = "https://kubernetes.default.svc"
# kube-aad-proxy runs in the agent's process; the connector pipes streams to it
# over loopback, so any free port does.
KAP_LISTEN = "127.0.0.1:0"

# Secret key -> AgentValues field holding its PEM text.
SECRET_KEYS: dict[str, str] = {
    "agent.key": "agent_key",
    "agent.crt": "agent_cert",
    "serving.crt": "serving_cert",
    "serving.key": "serving_key",
    "serving-ca.crt": "serving_ca",
    "relay-ca.crt": "relay_ca",
    "proxy-ca.crt": "proxy_ca",
    "oidc-ca.crt": "oidc_ca",
}
LABELS = {"app.kubernetes.io/name": AGENT_NAME, "app.kubernetes.io/part-of": "cluster-connect"}


@dataclass(frozen=True)
class AgentValues:
    """Everything the manifests depend on; ``""`` means unset.

    The PEM fields end up in the Secret; ``connect --dry-run`` leaves them
    empty (keys are made and registered only by a real connect).
    """

    cluster_name: str
    resource_group: str
    relay_url: str
    oidc_issuer: str
    oidc_audience: str = "api://cluster-connect"
    impersonate_with: str = "oid"
    image: str = DEFAULT_IMAGE
    proxy_https: str = ""
    proxy_http: str = ""
    no_proxy: str = ""
    agent_key: str = ""
    agent_cert: str = ""
    serving_cert: str = ""
    serving_key: str = ""
    serving_ca: str = ""
    relay_ca: str = ""
    proxy_ca: str = ""
    oidc_ca: str = ""
    chart: bool = False  # emit Helm sentinels instead of values (client.manifests_chart)

    @classmethod
    def chart_values(cls) -> AgentValues:
        """Values whose every field is its own sentinel (chart generation)."""
        names = [f.name for f in fields(cls) if f.name != "chart"]
        return cls(**{n: f"@@{n}@@" for n in names}, chart=True)


class _Quoted(str):
    """A string value, dumped double-quoted."""


class _Block(str):
    """A multi-line string value, dumped as a literal block."""


class _Dumper(yaml.SafeDumper):
    """Plain keys, double-quoted string values, literal blocks for files."""


_Dumper.add_representer(_Quoted, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style='"'))
_Dumper.add_representer(_Block, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style="|"))


def _quote_values(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _quote_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_quote_values(v) for v in value]
    if isinstance(value, str) and not isinstance(value, _Block):
        return _Quoted(value)
    return value


def _dump(value: Any) -> str:
    return yaml.dump(_quote_values(value), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=10_000)


def _v(values: AgentValues, name: str) -> str:
    return str(getattr(values, name))


def _b64(values: AgentValues, name: str) -> str:
    if values.chart:
        return f"@@b64:{name}@@"
    return base64.b64encode(_v(values, name).encode()).decode()


def _path_if(values: AgentValues, name: str, path: str) -> str:
    """``path`` when the file's content is set, else ``""`` (the agent then
    uses its default trust; an empty CA file would be an error)."""
    if values.chart:
        return f"@@if:{name}:{path}@@"
    return path if _v(values, name) else ""


def agent_config(values: AgentValues) -> dict[str, Any]:
    """The agent's config file (docs/INTERFACES.md §6) as it runs in the pod."""
    return {
        "relay": {"url": _v(values, "relay_url"),
                  "ca_file": _path_if(values, "relay_ca", f"{SECRET_DIR}/relay-ca.crt")},
        "cluster": {"resource_group": _v(values, "resource_group"), "name": _v(values, "cluster_name")},
        "agent_key_file": f"{SECRET_DIR}/agent.key",
        "kube_aad_proxy": {
            "listen": KAP_LISTEN,
            "serving_cert_file": f"{SECRET_DIR}/serving.crt",
            "serving_key_file": f"{SECRET_DIR}/serving.key",
            "upstream_url": IN_CLUSTER_API,
            "upstream_ca_file": f"{SA_DIR}/ca.crt",
            "upstream_token_file": f"{SA_DIR}/token",
            "impersonate_with": _v(values, "impersonate_with"),
            "oidc": {"issuers": [{
                "issuer": _v(values, "oidc_issuer"),
                "audiences": [_v(values, "oidc_audience")],
                "ca_file": _path_if(values, "oidc_ca", f"{SECRET_DIR}/oidc-ca.crt"),
            }]},
        },
        "proxy": {
            "https": _v(values, "proxy_https"),
            "http": _v(values, "proxy_http"),
            "no_proxy": _v(values, "no_proxy"),
            "ca_file": _path_if(values, "proxy_ca", f"{SECRET_DIR}/proxy-ca.crt"),
        },
    }


def _meta(name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = NAMESPACE
    meta["labels"] = dict(LABELS)
    return meta


def _rbac() -> list[dict[str, Any]]:
    rbac = "rbac.authorization.k8s.io"
    # kube-aad-proxy impersonates the caller (user, groups, oid/tid extras);
    # the agent's metadata reporter reads /version and the node list.
    rules = [
        {"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["userextras/oid", "userextras/tid"],
         "verbs": ["impersonate"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
        {"nonResourceURLs": ["/version"], "verbs": ["get"]},
    ]
    return [
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole", "metadata": _meta(AGENT_NAME, False),
         "rules": rules},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding", "metadata": _meta(AGENT_NAME, False),
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": AGENT_NAME},
         "subjects": [{"kind": "ServiceAccount", "name": AGENT_NAME, "namespace": NAMESPACE}]},
    ]


def _deployment(values: AgentValues) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(AGENT_NAME),
        "spec": {
            # One agent per cluster: the relay keeps one session per cluster,
            # and a second replica would only replace the first.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_NAME}},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": AGENT_NAME,
                    # fsGroup makes the 0440 Secret files readable by the
                    # non-root user the image runs as (deploy/Containerfile).
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                        "runAsGroup": 65532, "fsGroup": 65532},
                    "containers": [{
                        "name": AGENT_NAME,
                        "image": _v(values, "image"),
                        "args": ["--config", CONFIG_PATH],
                        "volumeMounts": [
                            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                            {"name": "secret", "mountPath": SECRET_DIR, "readOnly": True},
                        ],
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True},
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": AGENT_NAME}},
                        {"name": "secret", "secret": {"secretName": AGENT_NAME, "defaultMode": 0o440}},
                    ],
                },
            },
        },
    }


def build_manifests(values: AgentValues) -> list[dict[str, Any]]:
    """The objects ``connect`` applies, in apply order (Secret before the rest
    so a registration never names a key that is not stored in the cluster).

    Returns:
        Namespace, Secret, ServiceAccount, ClusterRole, ClusterRoleBinding,
        ConfigMap, Deployment.
    """
    config_text = _dump(agent_config(values))
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": dict(LABELS)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(AGENT_NAME), "type": "Opaque",
         "data": {key: _b64(values, name) for key, name in SECRET_KEYS.items()}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(AGENT_NAME)},
        *_rbac(),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(AGENT_NAME),
         "data": {"agent.yaml": _Block(config_text)}},
        _deployment(values),
    ]


def dump_manifests(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML (what ``--dry-run`` prints and the chart renders)."""
    return "".join("---\n" + _dump(m) for m in manifests)


_PLURALS = {"Namespace": "namespaces", "Secret": "secrets", "ServiceAccount": "serviceaccounts",
            "ConfigMap": "configmaps", "Deployment": "deployments", "ClusterRole": "clusterroles",
            "ClusterRoleBinding": "clusterrolebindings"}


def object_path(obj: dict[str, Any], *, collection: bool = False) -> str:
    """The REST path of ``obj`` (or of its collection, for a create)."""
    api = obj["apiVersion"]
    base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    path = f"{base}/namespaces/{ns}" if ns else base
    path += "/" + _PLURALS[obj["kind"]]
    return path if collection else f"{path}/{meta['name']}"
