"""The resource types the sandbox serves: one table, read by routing,
discovery, OpenAPI and the store."""

from __future__ import annotations

from dataclasses import dataclass, field

STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives and what it is called."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # Create-only "virtual" resources (reviews) are never stored.
    virtual: bool = False
    singular: str = field(default="")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


_ALL = ("all",)
_REVIEW = ("create",)

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",),
                 verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
                 subresources=("status", "finalize")),
    ResourceType("", "v1", "pods", "Pod", True, ("po",), categories=_ALL,
                 subresources=("status", "log", "exec", "attach", "portforward", "binding", "eviction")),
    ResourceType("", "v1", "services", "Service", True, ("svc",), categories=_ALL,
                 subresources=("status",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",), subresources=("token",)),
    ResourceType("", "v1", "events", "Event", True, ("ev",)),
    ResourceType("", "v1", "nodes", "Node", False, ("no",), subresources=("status",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("deploy",), categories=_ALL,
                 subresources=("status", "scale")),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, ("ev",)),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ResourceType("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False,
                 verbs=_REVIEW, virtual=True),
    ResourceType("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False,
                 verbs=_REVIEW, virtual=True),
    ResourceType("authentication.k8s.io", "v1beta1", "selfsubjectreviews", "SelfSubjectReview", False,
                 verbs=_REVIEW, virtual=True),
    ResourceType("authentication.k8s.io", "v1alpha1", "selfsubjectreviews", "SelfSubjectReview", False,
                 verbs=_REVIEW, virtual=True),
    ResourceType("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview",
                 False, verbs=_REVIEW, virtual=True),
    ResourceType("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview",
                 False, verbs=_REVIEW, virtual=True),
    ResourceType("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview",
                 False, verbs=_REVIEW, virtual=True),
)

# Preferred version first, as discovery lists them.
GROUP_VERSIONS: dict[str, list[str]] = {}
for _rt in RESOURCE_TYPES:
    GROUP_VERSIONS.setdefault(_rt.group, [])
    if _rt.version not in GROUP_VERSIONS[_rt.group]:
        GROUP_VERSIONS[_rt.group].append(_rt.version)

_BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The type served at ``/apis/<group>/<version>/<plural>``, if any."""
    return _BY_PATH.get((group, version, plural))


def types_in(group: str, version: str) -> list[ResourceType]:
    """All resource types of one group version, in table order."""
    return [rt for rt in RESOURCE_TYPES if rt.group == group and rt.version == version]


def storage_key(rt: ResourceType) -> tuple[str, str]:
    """Objects are stored per (group, plural) across versions. The two event
    groups keep separate stores: their shapes differ and no conversion is done."""
    return (rt.group, rt.plural)
