"""The sandbox API server through the ``kubernetes`` Python client and raw HTTPS:
paging, watch semantics, errors as Status, patches, authentication, impersonation."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from sandbox.apiserver.resources import lookup
from sandbox.apiserver.store import HISTORY_LIMIT
from tests.support.sandbox import RunningApiServer

NS = "pyclient"


@pytest.fixture(scope="module")
def core(sandbox_apiserver: RunningApiServer) -> client.CoreV1Api:
    """CoreV1Api as admin, with the test namespace created."""
    api = client.CoreV1Api(sandbox_apiserver.python_client())
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    return api


def _raw(server: RunningApiServer, method: str, path: str, *, body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None, ctx: ssl.SSLContext | None = None) -> tuple[int, Any, str]:
    """One HTTPS request; returns (status, decoded JSON or text, content type)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(server.server.url + path, data=data, method=method)
    if token is not False:  # type: ignore[comparison-overlap]
        req.add_header("Authorization", f"Bearer {token or server.server.admin_token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    context = ctx or ssl.create_default_context(cafile=str(server.server.ca_file))
    try:
        with urllib.request.urlopen(req, context=context, timeout=20) as resp:
            raw, status, ctype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raw, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
    try:
        return status, json.loads(raw), ctype
    except ValueError:
        return status, raw.decode(), ctype


def test_client_pages_a_list_with_limit_and_continue(core: client.CoreV1Api) -> None:
    """limit/continue returns every item exactly once across pages."""
    for i in range(7):
        core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{i}")))
    names: list[str] = []
    token = None
    for _ in range(10):
        page = core.list_namespaced_config_map(NS, limit=3, _continue=token, label_selector="")
        names += [cm.metadata.name for cm in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert [n for n in names if n.startswith("page-")] == [f"page-{i}" for i in range(7)]


def test_client_watch_resumes_after_resource_version(core: client.CoreV1Api) -> None:
    """A watch from a list's resourceVersion sees exactly the later events, in order."""
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w1")))
    core.patch_namespaced_config_map("w1", NS, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("w1", NS)
    w = watch.Watch()
    events = []
    for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=2):
        events.append((ev["type"], ev["object"].metadata.name))
        if len(events) == 3:
            w.stop()
    assert events == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_client_watch_with_too_old_resource_version_gets_expired_error(
        sandbox_apiserver: RunningApiServer, core: client.CoreV1Api) -> None:
    """Once the event history has moved past a resourceVersion, the watch sends 200 + ERROR 410 Expired."""
    rv = int(core.list_namespaced_config_map(NS).metadata.resource_version)
    store = sandbox_apiserver.server.store
    cms = lookup("", "v1", "configmaps")
    assert cms is not None

    def churn() -> None:
        # Directly on the server's loop: thousands of API round trips would be slow.
        for i in range(HISTORY_LIMIT + 1):
            obj = store.get(cms, NS, "page-0")
            obj["data"] = {"i": str(i)}
            store.update(cms, obj)

    sandbox_apiserver.loop.call(churn)
    status, body, _ = _raw(sandbox_apiserver, "GET",
                           f"/api/v1/namespaces/{NS}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert status == 200
    assert body["type"] == "ERROR"
    assert body["object"]["code"] == 410 and body["object"]["reason"] == "Expired"
    assert body["object"]["message"].startswith(f"too old resource version: {rv} (")


def test_client_watch_sends_initial_events_and_end_bookmark(sandbox_apiserver: RunningApiServer,
                                                            core: client.CoreV1Api) -> None:
    """sendInitialEvents=true lists current objects as ADDED, then the initial-events-end BOOKMARK."""
    core.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="init")))
    status, text, _ = _raw(sandbox_apiserver, "GET",
                           f"/api/v1/namespaces/{NS}/serviceaccounts?watch=true&sendInitialEvents=true"
                           "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1")
    assert status == 200
    events = [json.loads(line) for line in text.splitlines()] if isinstance(text, str) else [text]
    names = [e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"]
    assert {"default", "init"} <= set(names)
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert events.index(bookmark) == len(names)


def test_client_errors_are_kubernetes_status_objects(core: client.CoreV1Api) -> None:
    """404 NotFound, 409 AlreadyExists, 409 Conflict on a stale update, 422 Invalid."""
    with pytest.raises(ApiException) as nf:
        core.read_namespaced_config_map("missing", NS)
    body = json.loads(nf.value.body)
    assert (nf.value.status, body["reason"], body["message"]) == (404, "NotFound", 'configmaps "missing" not found')
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dup")))
    with pytest.raises(ApiException) as ae:
        core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dup")))
    assert (ae.value.status, json.loads(ae.value.body)["reason"]) == (409, "AlreadyExists")
    stale = core.read_namespaced_config_map("dup", NS)
    core.patch_namespaced_config_map("dup", NS, {"data": {"a": "1"}})
    stale.data = {"b": "2"}
    with pytest.raises(ApiException) as cf:
        core.replace_namespaced_config_map("dup", NS, stale)
    assert (cf.value.status, json.loads(cf.value.body)["reason"]) == (409, "Conflict")
    with pytest.raises(ApiException) as inv:
        core.create_namespaced_pod(NS, client.V1Pod(metadata=client.V1ObjectMeta(name="Bad_Name"),
                                                    spec=client.V1PodSpec(containers=[])))
    assert (inv.value.status, json.loads(inv.value.body)["reason"]) == (422, "Invalid")


def test_client_patches_merge_strategic_and_json(sandbox_apiserver: RunningApiServer,
                                                 core: client.CoreV1Api) -> None:
    """Strategic merge patches merge containers and env by name; JSON patch and merge patch apply;
    server-side apply is a clean 415."""
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="patchme", labels={"a": "1"}),
                       spec=client.V1PodSpec(containers=[
                           client.V1Container(name="one", image="busybox", env=[client.V1EnvVar(name="X", value="1")]),
                           client.V1Container(name="two", image="busybox")]))
    core.create_namespaced_pod(NS, pod)
    path = f"/api/v1/namespaces/{NS}/pods/patchme"
    smp = {"spec": {"containers": [{"name": "one", "env": [{"name": "Y", "value": "2"}]}]}}
    status, body, _ = _raw(sandbox_apiserver, "PATCH", path, body=smp,
                           headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert status == 200
    containers = body["spec"]["containers"]
    assert [c["name"] for c in containers] == ["one", "two"]
    assert containers[0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    status, body, _ = _raw(sandbox_apiserver, "PATCH", path,
                           body=[{"op": "replace", "path": "/metadata/labels/a", "value": "2"}],
                           headers={"Content-Type": "application/json-patch+json"})
    assert status == 200 and body["metadata"]["labels"] == {"a": "2"}
    status, body, _ = _raw(sandbox_apiserver, "PATCH", path, body={"metadata": {"labels": {"a": None, "b": "3"}}},
                           headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200 and body["metadata"]["labels"] == {"b": "3"}
    status, body, _ = _raw(sandbox_apiserver, "PATCH", path + "?fieldManager=x", body=b"metadata: {}",
                           headers={"Content-Type": "application/apply-patch+yaml"})
    assert status == 415 and body["kind"] == "Status" and body["reason"] == "UnsupportedMediaType"


def test_client_rejects_bad_token_and_limits_anonymous(sandbox_apiserver: RunningApiServer) -> None:
    """A bad bearer token is 401; no credentials is system:anonymous: /version ok, pods 403."""
    status, body, _ = _raw(sandbox_apiserver, "GET", "/api/v1/pods", token="not-a-token")
    assert (status, body["reason"], body["message"]) == (401, "Unauthorized", "Unauthorized")
    status, body, _ = _raw(sandbox_apiserver, "GET", "/version", token=False)  # type: ignore[arg-type]
    assert status == 200 and body["gitVersion"] == "v1.33.0" and body["minor"] == "33"
    status, body, _ = _raw(sandbox_apiserver, "GET", "/api/v1/namespaces/default/pods", token=False)  # type: ignore[arg-type]
    assert status == 403
    assert body["message"] == ('pods is forbidden: User "system:anonymous" cannot list resource "pods" in API '
                               'group "" in the namespace "default"')


def test_client_certificate_authenticates_cn_and_groups(sandbox_apiserver: RunningApiServer) -> None:
    """A client certificate from the sandbox CA authenticates as CN with O as groups."""
    issued = sandbox_apiserver.server.issue_client_certificate("carol", ["ops", "system:masters"])
    cert = sandbox_apiserver.state_dir / "carol.crt"
    key = sandbox_apiserver.state_dir / "carol.key"
    cert.write_bytes(issued.certificate_pem)
    key.write_bytes(issued.private_key_pem)
    ctx = ssl.create_default_context(cafile=str(sandbox_apiserver.server.ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    status, body, _ = _raw(sandbox_apiserver, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           body=review, token=False, ctx=ctx)  # type: ignore[arg-type]
    assert status == 201
    assert body["status"]["userInfo"] == {"username": "carol",
                                          "groups": ["ops", "system:masters", "system:authenticated"]}


def test_client_impersonation_of_extra_and_uid_needs_permission(sandbox_apiserver: RunningApiServer,
                                                               core: client.CoreV1Api) -> None:
    """Impersonate-Extra-* keys are lower-cased and unescaped; a missing permission is a 403."""
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    status, body, _ = _raw(sandbox_apiserver, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           body=review, headers={"Impersonate-User": "dave", "Impersonate-Uid": "u-1",
                                                 "Impersonate-Extra-Scopes%2Fread": "a"})
    assert status == 201
    assert body["status"]["userInfo"] == {"username": "dave", "uid": "u-1", "groups": ["system:authenticated"],
                                          "extra": {"scopes/read": ["a"]}}
    rbac = client.RbacAuthorizationV1Api(sandbox_apiserver.python_client())
    rbac.create_cluster_role(client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name="impersonate-dave"),
        rules=[client.V1PolicyRule(verbs=["impersonate"], api_groups=[""], resources=["users"],
                                   resource_names=["dave"])]))
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name="erin-impersonates-dave"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                  name="impersonate-dave"),
        subjects=[client.RbacV1Subject(kind="User", name="erin", api_group="rbac.authorization.k8s.io")]))
    issued = sandbox_apiserver.server.issue_client_certificate("erin")
    (sandbox_apiserver.state_dir / "erin.crt").write_bytes(issued.certificate_pem)
    (sandbox_apiserver.state_dir / "erin.key").write_bytes(issued.private_key_pem)
    ctx = ssl.create_default_context(cafile=str(sandbox_apiserver.server.ca_file))
    ctx.load_cert_chain(str(sandbox_apiserver.state_dir / "erin.crt"), str(sandbox_apiserver.state_dir / "erin.key"))
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    status, body, _ = _raw(sandbox_apiserver, "POST", path, body=review, token=False,  # type: ignore[arg-type]
                           ctx=ctx, headers={"Impersonate-User": "dave"})
    assert status == 201 and body["status"]["userInfo"]["username"] == "dave"
    status, body, _ = _raw(sandbox_apiserver, "POST", path, body=review, token=False,  # type: ignore[arg-type]
                           ctx=ctx, headers={"Impersonate-User": "dave", "Impersonate-Group": "admins"})
    assert status == 403
    assert body["message"] == ('groups "admins" is forbidden: User "erin" cannot impersonate resource "groups" '
                               'in API group "" at the cluster scope')
    status, body, _ = _raw(sandbox_apiserver, "POST", path, body=review, token=False,  # type: ignore[arg-type]
                           ctx=ctx, headers={"Impersonate-User": "dave", "Impersonate-Extra-Scopes": "x"})
    assert status == 403
    assert body["message"] == ('userextras.authentication.k8s.io "x" is forbidden: User "erin" cannot impersonate '
                               'resource "userextras/scopes" in API group "authentication.k8s.io" at the cluster '
                               'scope')
    audit = sandbox_apiserver.server.audit
    assert any(a.user == "dave" and a.impersonated_by == "erin" for a in audit)


def test_client_gets_tables_and_aggregated_discovery(sandbox_apiserver: RunningApiServer) -> None:
    """Table and aggregated discovery are negotiated by Accept, as kubectl asks for them."""
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io"
    status, body, _ = _raw(sandbox_apiserver, "GET", "/api/v1/nodes", headers={"Accept": accept})
    assert status == 200 and body["kind"] == "Table"
    assert [c["name"] for c in body["columnDefinitions"]] == ["Name", "Status", "Roles", "Age", "Version"]
    assert len(body["rows"]) == 3
    agg = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    status, body, ctype = _raw(sandbox_apiserver, "GET", "/apis", headers={"Accept": agg})
    assert ctype == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    groups = {item["metadata"]["name"] for item in body["items"]}
    assert {"apps", "rbac.authorization.k8s.io", "authentication.k8s.io", "authorization.k8s.io"} <= groups


def test_client_serviceaccount_token_secret_is_filled(sandbox_apiserver: RunningApiServer,
                                                      core: client.CoreV1Api) -> None:
    """A kubernetes.io/service-account-token Secret gets token, ca.crt and namespace; the token works."""
    import base64

    core.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="legacy")))
    core.create_namespaced_secret(NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name="legacy-token",
                                     annotations={"kubernetes.io/service-account.name": "legacy"}),
        type="kubernetes.io/service-account-token"))
    secret = core.read_namespaced_secret("legacy-token", NS)
    assert base64.b64decode(secret.data["namespace"]).decode() == NS
    assert base64.b64decode(secret.data["ca.crt"]) == sandbox_apiserver.server.ca_pem
    token = base64.b64decode(secret.data["token"]).decode()
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    status, body, _ = _raw(sandbox_apiserver, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           body=review, token=token)
    assert status == 201 and body["status"]["userInfo"]["username"] == f"system:serviceaccount:{NS}:legacy"
    core.delete_namespaced_secret("legacy-token", NS)
    status, _, _ = _raw(sandbox_apiserver, "GET", "/version", token=token)
    assert status == 401


def test_client_watch_sends_periodic_bookmarks(sandbox_apiserver: RunningApiServer, core: client.CoreV1Api,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """allowWatchBookmarks=true yields BOOKMARK events carrying only the current resourceVersion."""
    from sandbox.apiserver import watch as watch_module

    monkeypatch.setattr(watch_module, "BOOKMARK_INTERVAL", 0.2)
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    status, text, _ = _raw(sandbox_apiserver, "GET", f"/api/v1/namespaces/{NS}/configmaps?watch=true"
                           f"&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1")
    assert status == 200
    events = [json.loads(line) for line in text.splitlines()] if isinstance(text, str) else [text]
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks
    assert bookmarks[0]["object"]["kind"] == "ConfigMap"
    assert int(bookmarks[0]["object"]["metadata"]["resourceVersion"]) >= int(rv)


def test_client_expired_serviceaccount_token_is_unauthorized(sandbox_apiserver: RunningApiServer,
                                                             core: client.CoreV1Api) -> None:
    """A correctly signed but expired ServiceAccount token is a 401."""
    sa = core.create_namespaced_service_account(NS, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="shortlived")))
    app = sandbox_apiserver.server.app
    assert app is not None
    token, _ = app.authn.mint_bound(NS, "shortlived", sa.metadata.uid, audiences=[], expiration_seconds=-120)
    status, body, _ = _raw(sandbox_apiserver, "GET", f"/api/v1/namespaces/{NS}/pods", token=token)
    assert (status, body["reason"]) == (401, "Unauthorized")


def test_client_field_validation_strict_rejects_and_warn_prunes(sandbox_apiserver: RunningApiServer,
                                                                core: client.CoreV1Api) -> None:
    """fieldValidation=Strict refuses unknown fields with Kubernetes' message; Warn stores without them."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typo", "lables": {"a": "b"}},
            "dta": {"x": "y"}}
    path = f"/api/v1/namespaces/{NS}/configmaps"
    status, resp, _ = _raw(sandbox_apiserver, "POST", path + "?fieldValidation=Strict", body=body)
    assert status == 400
    assert resp["message"] == ('ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding '
                               'error: unknown field "dta", unknown field "metadata.lables"')
    status, resp, _ = _raw(sandbox_apiserver, "POST", path + "?fieldValidation=Warn", body=body)
    assert status == 201 and "dta" not in resp and "lables" not in resp["metadata"]


def test_client_filtered_watch_sees_objects_enter_and_leave_the_selector(core: client.CoreV1Api) -> None:
    """A label-selected watch gets ADDED when a change makes an object match, DELETED when it stops."""
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="mover")))
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    core.patch_namespaced_config_map("mover", NS, {"metadata": {"labels": {"stage": "on"}}})
    core.patch_namespaced_config_map("mover", NS, {"data": {"x": "1"}})
    core.patch_namespaced_config_map("mover", NS, {"metadata": {"labels": {"stage": "off"}}})
    w = watch.Watch()
    events = []
    for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=rv, label_selector="stage=on",
                       timeout_seconds=1):
        events.append(ev["type"])
    assert events == ["ADDED", "MODIFIED", "DELETED"]


def test_client_pod_log_options_are_validated_and_served(core: client.CoreV1Api) -> None:
    """pods/log serves text; a wrong container or previous=true is a 400 as from the kubelet."""
    pytest.importorskip("sandbox.runtime")
    core.create_namespaced_pod(NS, client.V1Pod(metadata=client.V1ObjectMeta(name="logger"),
                                                spec=client.V1PodSpec(containers=[
                                                    client.V1Container(name="main", image="busybox")])))
    text = core.read_namespaced_pod_log("logger", NS, limit_bytes=1 << 20)
    assert isinstance(text, str)
    with pytest.raises(ApiException) as bad:
        core.read_namespaced_pod_log("logger", NS, container="nope")
    assert bad.value.status == 400
    assert json.loads(bad.value.body)["message"] == "container nope is not valid for pod logger"
    with pytest.raises(ApiException) as prev:
        core.read_namespaced_pod_log("logger", NS, previous=True)
    assert prev.value.status == 400


def test_client_namespace_delete_cascades_and_new_namespace_gets_default_sa(core: client.CoreV1Api) -> None:
    """A new namespace gets its default ServiceAccount; deleting it removes what it held."""
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="short")))
    assert core.read_namespaced_service_account("default", "short").metadata.name == "default"
    core.create_namespaced_config_map("short", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
    core.delete_namespace("short")
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("x", "short")
    assert gone.value.status == 404
    with pytest.raises(ApiException) as ns_gone:
        core.create_namespaced_config_map("short", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="y")))
    assert ns_gone.value.status == 404
    assert json.loads(ns_gone.value.body)["message"] == 'namespaces "short" not found'
