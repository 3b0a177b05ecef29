"""``/openapi/v2`` as kubectl <= 1.28 fetches it: the gnostic ``openapi_v2.Document``
protobuf (Accept ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``;
client-go only unmarshals protobuf here).

The document lists each kind's PATCH operation with the ``fieldValidation``
query parameter (kubectl's server-side field validation check) and no
definitions: kubectl then computes apply patches from its compiled-in types.
Field numbers from google/gnostic openapiv2/OpenAPIv2.proto.
"""

from __future__ import annotations

from functools import lru_cache

from sandbox.apiserver.resources import RESOURCE_TYPES, ResourceType

# What kube-apiserver answers; the Accept form with "@" is not a valid media type for Go.
CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _str(num: int, text: str) -> bytes:
    return _bytes(num, text.encode())


def _bool(num: int, value: bool) -> bytes:
    return _varint(num << 3) + _varint(int(value))


def _named_any_yaml(num: int, name: str, yaml_text: str) -> bytes:
    # NamedAny{name=1, value=2 Any{yaml=2}}
    return _bytes(num, _str(1, name) + _bytes(2, _str(2, yaml_text)))


def _query_param(name: str) -> bytes:
    # ParametersItem{parameter=1 Parameter{non_body_parameter=2 NonBodyParameter{
    #   query_parameter_sub_schema=3 {required=1 in=2 name=4 type=6 unique_items=20}}}}
    sub = _str(2, "query") + _str(4, name) + _str(6, "string") + _bool(20, True)
    return _bytes(8, _bytes(1, _bytes(2, _bytes(3, sub))))


def _operation(rt: ResourceType, action: str, params: list[str]) -> bytes:
    gvk = f"group: \"{rt.group}\"\nkind: {rt.kind}\nversion: {rt.version}\n"
    body = _str(5, f"{action}{rt.kind}")
    body += b"".join(_query_param(p) for p in params)
    # responses=9 {response_code=1 NamedResponseValue{name=1, value=2 {response=1 {description=1}}}}
    body += _bytes(9, _bytes(1, _str(1, "200") + _bytes(2, _bytes(1, _str(1, "OK")))))
    body += _named_any_yaml(13, "x-kubernetes-action", f"{action}\n")
    body += _named_any_yaml(13, "x-kubernetes-group-version-kind", gvk)
    return body


def _path_item(rt: ResourceType) -> tuple[str, bytes]:
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    ns = "/namespaces/{namespace}" if rt.namespaced else ""
    if rt.virtual:
        path = f"{prefix}/{rt.plural}"
        return path, _bytes(4, _operation(rt, "post", ["dryRun", "fieldManager", "fieldValidation"]))
    path = f"{prefix}{ns}/{rt.plural}/{{name}}"
    item = _bytes(2, _operation(rt, "get", []))
    item += _bytes(3, _operation(rt, "put", ["dryRun", "fieldManager", "fieldValidation"]))
    item += _bytes(8, _operation(rt, "patch", ["dryRun", "fieldManager", "fieldValidation", "force"]))
    return path, item


@lru_cache(maxsize=4)
def document(kube_version: str) -> bytes:
    """The serialized Document for this server version."""
    doc = _str(1, "2.0") + _bytes(2, _str(1, "Kubernetes") + _str(2, f"v{kube_version}"))
    paths = b""
    for rt in RESOURCE_TYPES:
        path, item = _path_item(rt)
        paths += _bytes(2, _str(1, path) + _bytes(2, item))
    doc += _bytes(8, paths)
    doc += _bytes(9, b"")  # definitions: none (kubectl falls back to compiled-in types)
    return doc
