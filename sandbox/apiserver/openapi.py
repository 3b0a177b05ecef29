"""OpenAPI v3 documents: the root index (``/openapi/v3``) and one document per
group version with paths (kubectl's field-validation check looks for the
``fieldValidation`` parameter on each kind's PATCH operation) and component
schemas carrying the strategic-merge-patch metadata kubectl apply reads
(``x-kubernetes-patch-merge-key`` / ``-strategy``). Where a schema here lacks
a field, kubectl falls back to its compiled-in types, which agree."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from sandbox.apiserver.resources import GROUP_VERSIONS, ResourceType, types_in

Obj = dict[str, Any]
_META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_CORE = "io.k8s.api.core.v1"


def _ref(name: str) -> Obj:
    return {"allOf": [{"$ref": f"#/components/schemas/{name}"}], "default": {}}


def _arr(items: Obj, key: str = "", strategy: str = "") -> Obj:
    out: Obj = {"type": "array", "items": items}
    if key:
        out["x-kubernetes-patch-merge-key"] = key
    if strategy:
        out["x-kubernetes-patch-strategy"] = strategy
    if key or strategy:
        out["x-kubernetes-list-type"] = "map" if key else "set"
        if key:
            out["x-kubernetes-list-map-keys"] = [key]
    return out


_S: Obj = {"type": "string"}
_I: Obj = {"type": "integer", "format": "int32"}
_B: Obj = {"type": "boolean"}
_MAP: Obj = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}
_ANY: Obj = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_IOS: Obj = {"x-kubernetes-int-or-string": True}


def _obj(props: Obj, required: list[str] | None = None) -> Obj:
    out: Obj = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


# The nested types kubectl apply walks for the kinds people apply most.
_SCHEMAS: Obj = {
    f"{_META}.ObjectMeta": _obj({
        "name": _S, "generateName": _S, "namespace": _S, "uid": _S, "resourceVersion": _S,
        "generation": {"type": "integer", "format": "int64"}, "creationTimestamp": {"type": "string", "format": "date-time"},
        "deletionTimestamp": {"type": "string", "format": "date-time"}, "labels": _MAP, "annotations": _MAP,
        "finalizers": _arr({**_S, "default": ""}, strategy="merge"),
        "ownerReferences": _arr(_ref(f"{_META}.OwnerReference"), "uid", "merge"),
        "managedFields": _arr(_ANY), "selfLink": _S,
    }),
    f"{_META}.OwnerReference": _obj({"apiVersion": _S, "kind": _S, "name": _S, "uid": _S, "controller": _B,
                                     "blockOwnerDeletion": _B}, ["apiVersion", "kind", "name", "uid"]),
    f"{_META}.Patch": {"type": "object"},
    f"{_META}.LabelSelector": _obj({"matchLabels": _MAP, "matchExpressions": _arr(_ANY)}),
    f"{_CORE}.PodTemplateSpec": _obj({"metadata": _ref(f"{_META}.ObjectMeta"), "spec": _ref(f"{_CORE}.PodSpec")}),
    f"{_CORE}.PodSpec": _obj({
        "containers": _arr(_ref(f"{_CORE}.Container"), "name", "merge"),
        "initContainers": _arr(_ref(f"{_CORE}.Container"), "name", "merge"),
        "volumes": _arr(_ANY, "name", "merge,retainKeys"),
        "imagePullSecrets": _arr(_ANY, "name", "merge"),
        "tolerations": _arr(_ANY), "nodeSelector": _MAP, "nodeName": _S, "serviceAccountName": _S,
        "serviceAccount": _S, "restartPolicy": _S, "terminationGracePeriodSeconds": {"type": "integer"},
        "dnsPolicy": _S, "hostNetwork": _B, "securityContext": _ANY, "affinity": _ANY, "schedulerName": _S,
        "automountServiceAccountToken": _B, "hostname": _S, "subdomain": _S, "priorityClassName": _S,
        "enableServiceLinks": _B, "activeDeadlineSeconds": {"type": "integer"},
    }, ["containers"]),
    f"{_CORE}.Container": _obj({
        "name": _S, "image": _S, "command": _arr(_S), "args": _arr(_S), "workingDir": _S,
        "ports": _arr(_ref(f"{_CORE}.ContainerPort"), "containerPort", "merge"),
        "env": _arr(_ref(f"{_CORE}.EnvVar"), "name", "merge"),
        "envFrom": _arr(_ANY), "resources": _ANY,
        "volumeMounts": _arr(_ANY, "mountPath", "merge"), "livenessProbe": _ANY, "readinessProbe": _ANY,
        "startupProbe": _ANY, "lifecycle": _ANY, "imagePullPolicy": _S, "securityContext": _ANY,
        "stdin": _B, "stdinOnce": _B, "tty": _B, "terminationMessagePath": _S, "terminationMessagePolicy": _S,
    }, ["name"]),
    f"{_CORE}.ContainerPort": _obj({"name": _S, "containerPort": _I, "hostPort": _I, "protocol": _S,
                                    "hostIP": _S}, ["containerPort"]),
    f"{_CORE}.EnvVar": _obj({"name": _S, "value": _S, "valueFrom": _ANY}, ["name"]),
    f"{_CORE}.ServicePort": _obj({"name": _S, "port": _I, "targetPort": _IOS, "protocol": _S, "nodePort": _I,
                                  "appProtocol": _S}, ["port"]),
}

# spec schemas per kind (others get a free-form spec).
_SPECS: dict[str, Obj] = {
    "Pod": {"spec": _ref(f"{_CORE}.PodSpec")},
    "Deployment": {"spec": _obj({
        "replicas": _I, "selector": _ref(f"{_META}.LabelSelector"), "template": _ref(f"{_CORE}.PodTemplateSpec"),
        "strategy": _ANY, "minReadySeconds": _I, "revisionHistoryLimit": _I, "paused": _B,
        "progressDeadlineSeconds": _I})},
    "Service": {"spec": _obj({"ports": _arr(_ref(f"{_CORE}.ServicePort"), "port", "merge"), "selector": _MAP,
                              "type": _S, "clusterIP": _S, "clusterIPs": _arr(_S), "sessionAffinity": _S,
                              "externalName": _S, "ipFamilies": _arr(_S), "ipFamilyPolicy": _S})},
    "ConfigMap": {"data": _MAP, "binaryData": {"type": "object", "additionalProperties": {"type": "string",
                                                                                          "format": "byte"}},
                  "immutable": _B},
    "Secret": {"data": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
               "stringData": _MAP, "type": _S, "immutable": _B},
    "Namespace": {"spec": _ANY},
    "ServiceAccount": {"secrets": _arr(_ANY, "name", "merge"), "imagePullSecrets": _arr(_ANY),
                       "automountServiceAccountToken": _B},
    "Role": {"rules": _arr(_ANY)},
    "ClusterRole": {"rules": _arr(_ANY), "aggregationRule": _ANY},
    "RoleBinding": {"subjects": _arr(_ANY), "roleRef": _ANY},
    "ClusterRoleBinding": {"subjects": _arr(_ANY), "roleRef": _ANY},
}


def _schema_name(rt: ResourceType) -> str:
    if rt.group == "":
        return f"{_CORE}.{rt.kind}"
    short = rt.group.split(".")[0] if rt.group.endswith(".k8s.io") else rt.group
    return f"io.k8s.api.{short}.{rt.version}.{rt.kind}"


def _gvk(rt: ResourceType) -> list[Obj]:
    return [{"group": rt.group, "version": rt.version, "kind": rt.kind}]


def _param(name: str, where: str = "query", typ: str = "string") -> Obj:
    p: Obj = {"name": name, "in": where, "schema": {"type": typ, "uniqueItems": True}}
    if where == "path":
        p["required"] = True
    return p


def _op(rt: ResourceType, action: str, params: list[Obj]) -> Obj:
    ref = {"$ref": f"#/components/schemas/{_schema_name(rt)}"}
    op: Obj = {"operationId": f"{action}{rt.kind}", "parameters": params,
               "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
               "x-kubernetes-action": action, "x-kubernetes-group-version-kind": _gvk(rt)[0]}
    if action in ("post", "put"):
        op["requestBody"] = {"content": {"*/*": {"schema": ref}}, "required": True}
    elif action == "patch":
        # kubectl apply checks these media types before using the v3 schema for the patch.
        patch_body = {"schema": {"$ref": f"#/components/schemas/{_META}.Patch"}}
        op["requestBody"] = {"content": {t: patch_body for t in _PATCH_TYPES}, "required": True}
    return op


_PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json")


def _write_params() -> list[Obj]:
    return [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]


def _paths(rt: ResourceType) -> Obj:
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    if rt.namespaced:
        base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}"
    else:
        base = f"{prefix}/{rt.plural}"
    shared = [_param("namespace", "path")] if rt.namespaced else []
    if rt.virtual:
        return {base: {"post": _op(rt, "post", _write_params()), "parameters": shared}}
    return {
        base: {"get": _op(rt, "list", [_param("labelSelector"), _param("fieldSelector"), _param("limit"),
                                       _param("continue"), _param("watch", typ="boolean")]),
               "post": _op(rt, "post", _write_params()),
               "delete": _op(rt, "deletecollection", []),
               "parameters": shared},
        f"{base}/{{name}}": {
            "get": _op(rt, "get", []),
            "put": _op(rt, "put", _write_params()),
            "patch": _op(rt, "patch", [*_write_params(), _param("force", typ="boolean")]),
            "delete": _op(rt, "delete", [_param("dryRun")]),
            "parameters": [*shared, _param("name", "path")],
        },
    }


def _kind_schema(rt: ResourceType) -> Obj:
    props: Obj = {"apiVersion": _S, "kind": _S, "metadata": _ref(f"{_META}.ObjectMeta"),
                  **_SPECS.get(rt.kind, {"spec": _ANY}), "status": _ANY}
    return {**_obj(props), "x-kubernetes-group-version-kind": _gvk(rt)}


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


@cache
def _gv_document(group: str, version: str) -> str:
    types = types_in(group, version)
    paths: Obj = {}
    schemas: Obj = dict(_SCHEMAS)
    for rt in types:
        paths.update(_paths(rt))
        schemas[_schema_name(rt)] = _kind_schema(rt)
    doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1"}, "paths": paths,
           "components": {"schemas": schemas}}
    return json.dumps(doc, separators=(",", ":"))


def _root() -> Obj:
    paths: Obj = {}
    for group, versions in GROUP_VERSIONS.items():
        for version in versions:
            digest = hashlib.sha512(_gv_document(group, version).encode()).hexdigest()[:128].upper()
            rel = _gv_path(group, version)
            paths[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash={digest}"}
    return {"paths": paths}


def document(path: str, query: dict[str, str]) -> Obj | None:
    """The document served at ``path`` or None (404). /openapi/v2 is not
    served: clients then use v3 (kubectl) or their compiled-in types."""
    if path == "/openapi/v3":
        return _root()
    if path.startswith("/openapi/v3/"):
        rel = path[len("/openapi/v3/"):]
        for group, versions in GROUP_VERSIONS.items():
            for version in versions:
                if _gv_path(group, version) == rel:
                    return json.loads(_gv_document(group, version))  # type: ignore[no-any-return]
    return None
