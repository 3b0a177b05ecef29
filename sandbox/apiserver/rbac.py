"""RBAC evaluated from the stored Roles, ClusterRoles and their bindings, as
k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac does (no aggregation)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sandbox.apiserver.authn import UserInfo
from sandbox.apiserver.resources import lookup
from sandbox.apiserver.store import Store

_RBAC = "rbac.authorization.k8s.io"
CLUSTER_ROLES = lookup(_RBAC, "v1", "clusterroles")
CLUSTER_ROLE_BINDINGS = lookup(_RBAC, "v1", "clusterrolebindings")
ROLES = lookup(_RBAC, "v1", "roles")
ROLE_BINDINGS = lookup(_RBAC, "v1", "rolebindings")


@dataclass(frozen=True)
class Attributes:
    """What is asked: a resource request (``resource`` set) or a path."""

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)


def _subject_matches(subject: dict[str, Any], user: UserInfo, binding_ns: str) -> bool:
    kind = str(subject.get("kind", ""))
    name = str(subject.get("name", ""))
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user.name == f"system:serviceaccount:{ns}:{name}"
    return False


def _has(values: Iterable[str], want: str) -> bool:
    vals = list(values or ())
    return "*" in vals or want in vals


def _resource_matches(resources: list[str], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for r in resources or ():
        if r == "*" or r == combined:
            return True
        if subresource and r == f"*/{subresource}":
            return True
    return False


def _url_matches(urls: list[str], path: str) -> bool:
    for u in urls or ():
        if u == "*" or u == path:
            return True
        if u.endswith("*") and path.startswith(u[:-1]):
            return True
    return False


def rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    """One PolicyRule against one request."""
    if not _has(rule.get("verbs", []), attrs.verb):
        return False
    if not attrs.is_resource:
        return _url_matches(rule.get("nonResourceURLs", []), attrs.path)
    if not _has(rule.get("apiGroups", []), attrs.group):
        return False
    if not _resource_matches(rule.get("resources", []), attrs.resource, attrs.subresource):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


class Authorizer:
    """Answers (allowed, reason) from the store's current RBAC objects."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _role_rules(self, ref: dict[str, Any], binding_ns: str) -> list[dict[str, Any]]:
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind == "ClusterRole" and CLUSTER_ROLES:
            role = self.store.peek(CLUSTER_ROLES, "", name)
        elif kind == "Role" and ROLES:
            role = self.store.peek(ROLES, binding_ns, name)
        else:
            role = None
        return list(role.get("rules") or []) if role else []

    def authorize(self, user: UserInfo, attrs: Attributes) -> tuple[bool, str]:
        """Whether ``user`` may do ``attrs``; the reason names the granting binding."""
        assert CLUSTER_ROLE_BINDINGS and ROLE_BINDINGS
        for b in self.store.items(CLUSTER_ROLE_BINDINGS):
            if any(_subject_matches(s, user, "") for s in b.get("subjects") or []):
                if any(rule_allows(r, attrs) for r in self._role_rules(b.get("roleRef", {}), "")):
                    name = b["metadata"]["name"]
                    return True, f'RBAC: allowed by ClusterRoleBinding "{name}"'
        if attrs.namespace and attrs.is_resource:
            for b in self.store.items(ROLE_BINDINGS, attrs.namespace):
                if any(_subject_matches(s, user, attrs.namespace) for s in b.get("subjects") or []):
                    rules = self._role_rules(b.get("roleRef", {}), attrs.namespace)
                    if any(rule_allows(r, attrs) for r in rules):
                        name = b["metadata"]["name"]
                        return True, f'RBAC: allowed by RoleBinding "{name}/{attrs.namespace}"'
        return False, ""

    def rules_for(self, user: UserInfo, namespace: str) -> list[dict[str, Any]]:
        """Every rule that applies to ``user`` in ``namespace`` (SelfSubjectRulesReview)."""
        assert CLUSTER_ROLE_BINDINGS and ROLE_BINDINGS
        out: list[dict[str, Any]] = []
        for b in self.store.items(CLUSTER_ROLE_BINDINGS):
            if any(_subject_matches(s, user, "") for s in b.get("subjects") or []):
                out += self._role_rules(b.get("roleRef", {}), "")
        if namespace:
            for b in self.store.items(ROLE_BINDINGS, namespace):
                if any(_subject_matches(s, user, namespace) for s in b.get("subjects") or []):
                    out += self._role_rules(b.get("roleRef", {}), namespace)
        return out
