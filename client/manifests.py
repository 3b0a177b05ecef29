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
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

__all__ = [
    "AGENT_NAME", "CONFIG_PATH", "DEFAULT_IMAGE", "DEFAULT_RESOURCES", "MANAGED_BY_ARCCTL", "MANAGED_BY_LABEL",
    "NAMESPACE", "OWNER_ANNOTATION", "PLACEMENT_FIELDS",
    "POD_SECURITY_LABELS", "REQUIRED_VALUES", "SECRET_DIR", "SECRET_KEYS",
    "AgentValues", "OidcIssuerValues", "agent_config", "build_manifests", "cluster_scoped_name", "dump_manifests", "install_id",
    "object_path",
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
# The agent's /livez /readyz /metrics (agent/health.py): on the pod's address so
# the kubelet's probes and a Prometheus scrape reach it; no Service exposes it.
HEALTH_PORT = 8081

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
# Ownership, as Helm marks what it installs: every object names the install
# (the cluster id at the relay) and the tool that manages it. `connect` takes
# over nothing that another install or nobody owns, and `delete` removes only
# what its install owns (client/arcctl_connect.py, client/arcctl_delete.py).
OWNER_ANNOTATION = "cluster-connect.io/cluster-id"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_ARCCTL = "arcctl"
# The namespace arcctl creates enforces the "restricted" Pod Security Standard,
# which the agent's pod meets (tests/client/test_pod_security.py checks it).
POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
# The agent is one Python process: ~60 MiB at rest. Its stream buffers are
# bounded per session (tunnel/limits.py: 1,024 streams, 32 MiB of window growth
# beyond the 64 KiB initial windows), so 512 MiB is a ceiling it never needs in
# normal use; no CPU limit, so that a burst is slowed by the node, not throttled.
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
# Pod placement values: empty unless set (the chart's values.yaml offers them).
PLACEMENT_FIELDS = ("node_selector", "tolerations", "affinity", "image_pull_secrets")
# Values the chart cannot default: `helm install` fails with this message
# when one is missing (Helm's `required`).
REQUIRED_VALUES: dict[str, str] = {
    "cluster_name": "the cluster's name as registered at the relay (arcctl connect --helm-values writes it)",
    "relay_url": "the relay's https URL as the cluster reaches it",
    "oidc_issuer": "the OIDC issuer URL that kube-aad-proxy trusts",
    "agent_key": "the agent's private key (arcctl connect --helm-values writes it)",
    "agent_cert": "the agent's certificate registered at the relay (arcctl connect --helm-values writes it)",
    "serving_cert": "kube-aad-proxy's serving certificate (arcctl connect --helm-values writes it)",
    "serving_key": "kube-aad-proxy's serving key (arcctl connect --helm-values writes it)",
}


@dataclass(frozen=True)
class OidcIssuerValues:
    """One more issuer kube-aad-proxy trusts beside ``AgentValues.oidc_issuer``
    (``arcctl connect --oidc-issuer`` given again). ``None``: the agent's default."""

    issuer: str
    audience: str = "api://cluster-connect"
    ca_pem: str = ""
    alias: str | None = None
    username_prefix: str | None = None
    groups_prefix: str | None = None


def _naming(alias: str | None, username_prefix: str | None, groups_prefix: str | None) -> dict[str, str]:
    """The agent config keys naming an issuer's principals, those that are set."""
    return {k: v for k, v in (("alias", alias), ("username_prefix", username_prefix),
                              ("groups_prefix", groups_prefix)) if v is not None}


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
    # Structured pod values (resources, placement): YAML-shaped, as in a pod spec.
    resources: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_RESOURCES)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    image_pull_secrets: Sequence[Mapping[str, str]] = ()
    # The first issuer's alias/username_prefix/groups_prefix, and more issuers
    # (arcctl only: the chart trusts one issuer).
    oidc_naming: Mapping[str, str] = field(default_factory=dict)
    extra_issuers: Sequence[OidcIssuerValues] = ()
    chart: bool = False  # emit Helm sentinels instead of values (client.manifests_chart)

    @classmethod
    def chart_values(cls) -> AgentValues:
        """Values whose every string field is its own sentinel (chart generation)."""
        sentinels: dict[str, Any] = {f.name: f"@@{f.name}@@" for f in fields(cls) if f.type == "str"}
        return dataclasses.replace(cls("", "", "", ""), chart=True, **sentinels)


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
    if values.chart and name in REQUIRED_VALUES:
        return f"@@required:{name}@@"
    return str(getattr(values, name))


def _b64(values: AgentValues, name: str) -> str:
    if values.chart:
        return f"@@b64:{name}@@"
    return base64.b64encode(_v(values, name).encode()).decode()


def _namespace(values: AgentValues) -> str:
    """arcctl installs into its own namespace; the chart into the release's."""
    return "@@namespace@@" if values.chart else NAMESPACE


def _optional(values: AgentValues, name: str, spec: dict[str, Any], key: str) -> None:
    """Set ``spec[key]`` to a structured value only when it is not empty (the
    API server drops empty ones, and ``connect`` compares what it applied)."""
    if values.chart:
        spec[key] = f"@@with:{name}@@"
    elif getattr(values, name):
        spec[key] = _plain(getattr(values, name))


def _plain(value: Any) -> Any:
    """A structured value as plain dicts and lists (for the YAML dumper)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
                **({} if values.chart else dict(values.oidc_naming)),
            }, *_extra_issuers(values)]},
        },
        "health": {"listen": f"0.0.0.0:{HEALTH_PORT}"},
        "proxy": {
            "https": _v(values, "proxy_https"),
            "http": _v(values, "proxy_http"),
            "no_proxy": _v(values, "no_proxy"),
            "ca_file": _path_if(values, "proxy_ca", f"{SECRET_DIR}/proxy-ca.crt"),
        },
    }


def _extra_issuer_ca_key(index: int) -> str:
    return f"oidc-ca-{index + 2}.crt"


def _extra_issuers(values: AgentValues) -> list[dict[str, Any]]:
    if values.chart:
        return []
    return [{"issuer": extra.issuer, "audiences": [extra.audience],
             "ca_file": f"{SECRET_DIR}/{_extra_issuer_ca_key(i)}" if extra.ca_pem else "",
             **_naming(extra.alias, extra.username_prefix, extra.groups_prefix)}
            for i, extra in enumerate(values.extra_issuers)]


def _secret_data(values: AgentValues) -> dict[str, str]:
    data = {key: _b64(values, name) for key, name in SECRET_KEYS.items()}
    if not values.chart:
        data.update({_extra_issuer_ca_key(i): base64.b64encode(extra.ca_pem.encode()).decode()
                     for i, extra in enumerate(values.extra_issuers) if extra.ca_pem})
    return data


def cluster_scoped_name(values: AgentValues) -> str:
    """The ClusterRole's and ClusterRoleBinding's name: one per namespace, so
    that two installs (Helm releases in two namespaces) never share one."""
    return f"{AGENT_NAME}-{_namespace(values)}"


def install_id(values: AgentValues) -> str:
    """The owner every object names: the cluster id at the relay."""
    return f"{_v(values, 'resource_group')}/{_v(values, 'cluster_name')}"


def _meta(values: AgentValues, name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = _namespace(values)
    manager = "@@release_service@@" if values.chart else MANAGED_BY_ARCCTL
    meta["labels"] = {**LABELS, MANAGED_BY_LABEL: manager}
    meta["annotations"] = {OWNER_ANNOTATION: install_id(values)}
    return meta


def _rbac(values: AgentValues) -> list[dict[str, Any]]:
    rbac = "rbac.authorization.k8s.io"
    # kube-aad-proxy impersonates the caller (user, groups, oid/tid extras):
    # the API server then authorizes each request as the person who made it,
    # by the cluster's own RBAC (docs/architecture.md, "Identity in the
    # cluster"). The agent's metadata reporter reads /version and the node list.
    rules = [
        {"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["userextras/oid", "userextras/tid"],
         "verbs": ["impersonate"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
        {"nonResourceURLs": ["/version"], "verbs": ["get"]},
    ]
    return [
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole",
         "metadata": _meta(values, cluster_scoped_name(values), False), "rules": rules},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(values, cluster_scoped_name(values), False),
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": cluster_scoped_name(values)},
         "subjects": [{"kind": "ServiceAccount", "name": AGENT_NAME, "namespace": _namespace(values)}]},
    ]


def _container(values: AgentValues) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": AGENT_NAME,
        "image": _v(values, "image"),
        "args": ["--config", CONFIG_PATH],
        "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        # Live: the dial loop runs. Ready: the relay session is up and the API
        # server answers (a rollout waits for the new pod's session; see the
        # strategy below).
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "health"},
                          "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"},
                           "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "secret", "mountPath": SECRET_DIR, "readOnly": True},
        ],
        # The "restricted" Pod Security Standard, field by field.
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }
    _optional(values, "resources", container, "resources")
    return container


def _pod_spec(values: AgentValues) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": AGENT_NAME,
        # fsGroup makes the 0440 Secret files readable by the non-root
        # user the image runs as (deploy/Containerfile).
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(values)],
        "volumes": [
            {"name": "config", "configMap": {"name": AGENT_NAME}},
            {"name": "secret", "secret": {"secretName": AGENT_NAME, "defaultMode": 0o440}},
        ],
    }
    for name, key in zip(PLACEMENT_FIELDS, ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"),
                         strict=True):
        _optional(values, name, spec, key)
    return spec


def _deployment(values: AgentValues) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(values, AGENT_NAME),
        "spec": {
            # One agent per cluster: the relay keeps one session per cluster.
            # A rollout starts the new pod before the old one stops
            # (maxUnavailable 0): the new session replaces the old one at the
            # relay, so the cluster stays reachable; the connector slows down
            # if two pods keep replacing each other (agent/connector.py).
            # No PodDisruptionBudget: with one replica it would either block
            # every node drain (minAvailable 1) or allow everything.
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_NAME}},
            "template": {"metadata": {"labels": dict(LABELS)}, "spec": _pod_spec(values)},
        },
    }


def build_manifests(values: AgentValues) -> list[dict[str, Any]]:
    """The objects ``connect`` applies, in apply order (Secret before the rest
    so a registration never names a key that is not stored in the cluster).

    Returns:
        Namespace (not in the chart: Helm installs into the release's
        namespace), Secret, ServiceAccount, ClusterRole, ClusterRoleBinding,
        ConfigMap, Deployment.
    """
    config_text = _dump(agent_config(values))
    namespace_meta = _meta(values, NAMESPACE, False)
    namespace_meta["labels"].update(POD_SECURITY_LABELS)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": namespace_meta}
    return [
        *([] if values.chart else [namespace]),
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(values, AGENT_NAME), "type": "Opaque",
         "data": _secret_data(values)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(values, AGENT_NAME)},
        *_rbac(values),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(values, AGENT_NAME),
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
