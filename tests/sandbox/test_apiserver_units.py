"""Pure pieces of the sandbox API server: selectors, patches, protobuf bodies,
request routing, RBAC rules, Status messages."""

from __future__ import annotations

import pytest

from sandbox.apiserver import patch, protobuf, routing
from sandbox.apiserver import status as st
from sandbox.apiserver.rbac import Attributes, rule_allows
from sandbox.apiserver.selectors import parse_field_selector, parse_label_selector


def _key(num: int, wt: int) -> bytes:
    return _varint(num << 3 | wt)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _varint(len(payload)) + payload


def _s(num: int, text: str) -> bytes:
    return _ld(num, text.encode())


def _entry(num: int, k: str, v: bytes) -> bytes:
    return _ld(num, _s(1, k) + _ld(2, v))


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return protobuf.MAGIC + _ld(1, _s(1, api_version) + _s(2, kind)) + _ld(2, raw)


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),
    ("a in (x, y)", {"a": "y"}, True),
    ("a notin (x,y)", {"a": "y"}, False),
    ("a notin (x,y)", {}, True),
    ("a", {"a": ""}, True),
    ("!a", {"a": "1"}, False),
    ("a=b,c in (d),!e", {"a": "b", "c": "d"}, True),
])
def test_selector_matches_label_requirements(selector: str, labels: dict[str, str], expected: bool) -> None:
    """Each label selector operator matches as Kubernetes defines it."""
    assert parse_label_selector(selector)(labels) is expected


def test_selector_rejects_unknown_field() -> None:
    """Field selectors support only the kind's known fields (400 otherwise)."""
    match = parse_field_selector("spec.nodeName=n1,status.phase!=Failed", "Pod")
    assert match({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    with pytest.raises(st.ApiError) as exc:
        parse_field_selector("spec.bogus=1", "Pod")
    assert exc.value.code == 400


def test_patch_strategic_merges_lists_by_key_and_honours_directives() -> None:
    """containers/env/ports merge by key; $patch: delete removes; $setElementOrder reorders."""
    doc = {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}], "env": [{"name": "X"}]},
                                   {"name": "b"}]}}
    out = patch.strategic_merge_patch(doc, {"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
        "containers": [{"name": "a", "ports": [{"containerPort": 81}], "env": [{"name": "X", "$patch": "delete"}]}],
    }})
    assert [c["name"] for c in out["spec"]["containers"]] == ["b", "a"]
    a = out["spec"]["containers"][1]
    assert a["ports"] == [{"containerPort": 80}, {"containerPort": 81}] and a["env"] == []


def test_patch_json_patch_applies_operations_in_order() -> None:
    """RFC 6902 add/replace/remove/move/copy/test."""
    doc = {"a": [1, 2], "b": {"c": 1}}
    ops = [{"op": "add", "path": "/a/-", "value": 3}, {"op": "replace", "path": "/b/c", "value": 2},
           {"op": "copy", "from": "/b", "path": "/d"}, {"op": "move", "from": "/a/0", "path": "/e"},
           {"op": "remove", "path": "/b"}, {"op": "test", "path": "/e", "value": 1}]
    assert patch.json_patch(doc, ops) == {"a": [2, 3], "d": {"c": 2}, "e": 1}
    with pytest.raises(st.ApiError) as exc:
        patch.json_patch(doc, [{"op": "remove", "path": "/nope"}])
    assert exc.value.code == 422


def test_protobuf_decodes_configmap_envelope() -> None:
    """A k8s\\0 + Unknown{ConfigMap} body decodes to the JSON shape."""
    meta = _s(1, "cfg") + _s(3, "ns") + _entry(11, "app", b"web") + _ld(8, b"")
    raw = _ld(1, meta) + _entry(2, "greeting", b"hello") + _entry(3, "bin", b"\x00\x01")
    obj = protobuf.decode_body(_envelope("v1", "ConfigMap", raw))
    assert obj == {"kind": "ConfigMap", "apiVersion": "v1",
                   "metadata": {"name": "cfg", "namespace": "ns", "labels": {"app": "web"}},
                   "data": {"greeting": "hello"}, "binaryData": {"bin": "AAE="}}


def test_protobuf_decodes_deployment_with_template_and_pointer_zero() -> None:
    """Nested Deployment fields decode; replicas=0 is kept (pointer), hostPort=0 omitted."""
    container = _s(1, "nginx") + _s(2, "nginx:1") + _ld(6, _key(2, 0) + _varint(0) + _key(3, 0) + _varint(80))
    template = _ld(1, _entry(11, "app", b"web")) + _ld(2, _ld(2, container))
    spec = _key(1, 0) + _varint(0) + _ld(2, _entry(1, "app", b"web")) + _ld(3, template) + _ld(4, b"")
    obj = protobuf.decode_body(_envelope("apps/v1", "Deployment", _ld(1, _s(1, "web")) + _ld(2, spec)))
    assert obj["spec"]["replicas"] == 0
    assert obj["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert obj["spec"]["template"]["spec"]["containers"] == [
        {"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}]}]
    assert obj["spec"]["strategy"] == {}


def test_protobuf_rejects_unknown_kind_and_garbage() -> None:
    """Unsupported kinds are 415; truncated bytes are 400."""
    with pytest.raises(st.ApiError) as exc:
        protobuf.decode_body(_envelope("batch/v1", "Job", b""))
    assert exc.value.code == 415
    with pytest.raises(st.ApiError) as exc:
        protobuf.decode_body(protobuf.MAGIC + b"\x0a\xff")
    assert exc.value.code == 400


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/api/v1/namespaces/ns/pods", {}, ("list", "", "ns", "pods", "", "")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}, ("watch", "", "ns", "pods", "", "")),
    ("GET", "/api/v1/watch/namespaces/ns/pods", {}, ("watch", "", "ns", "pods", "", "")),
    ("POST", "/api/v1/namespaces/ns/pods/p/exec", {}, ("create", "", "ns", "pods", "p", "exec")),
    ("GET", "/api/v1/namespaces/ns", {}, ("get", "", "ns", "namespaces", "ns", "")),
    ("DELETE", "/apis/apps/v1/namespaces/ns/deployments", {}, ("deletecollection", "apps", "ns", "deployments",
                                                                "", "")),
    ("PATCH", "/apis/rbac.authorization.k8s.io/v1/clusterroles/x", {},
     ("patch", "rbac.authorization.k8s.io", "", "clusterroles", "x", "")),
])
def test_routing_computes_request_attributes(method: str, path: str, query: dict[str, str],
                                             expected: tuple[str, ...]) -> None:
    """Verb, group, namespace, resource, name, subresource as RequestInfoFactory computes them."""
    info = routing.parse(method, path, query)
    assert info.is_resource
    assert (info.verb, info.group, info.namespace, info.resource, info.name, info.subresource) == expected


def test_rbac_rule_matches_resources_names_and_urls() -> None:
    """Wildcards, subresources, resourceNames and nonResourceURL prefixes."""
    rule = {"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"], "resourceNames": ["p1"]}
    assert rule_allows(rule, Attributes("get", "", "pods", "log", "ns", "p1"))
    assert not rule_allows(rule, Attributes("get", "", "pods", "log", "ns", "p2"))
    assert not rule_allows(rule, Attributes("get", "", "pods", "", "ns", "p1"))
    assert rule_allows({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]},
                       Attributes("update", "apps", "deployments", "scale"))
    assert rule_allows({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}, Attributes("get", path="/apis/apps"))


def test_status_forbidden_message_matches_kubernetes() -> None:
    """The 403 text is NewForbidden(qualified resource, name, forbiddenMessage)."""
    err = st.forbidden("bob", "impersonate", "", "serviceaccounts", "", "ns", "sa", "")
    assert err.message == ('serviceaccounts "sa" is forbidden: User "bob" cannot impersonate resource '
                           '"serviceaccounts" in API group "" in the namespace "ns"')
    err = st.forbidden("bob", "get", "", "", "", "", "", "/metrics")
    assert err.message == 'forbidden: User "bob" cannot get path "/metrics"'
