"""PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch for the
common cases (lists merged by key: containers, env, ports, volumes ...), and
JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

from sandbox.apiserver.status import ApiError, bad_request

# Field name -> merge key, from the k8s.io/api patchMergeKey tags. "ports" is
# resolved per item: containerPort for container ports, port for services.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "conditions": "type",
    "ports": "",
    "secrets": "name",
}
# Primitive lists with patchStrategy=merge.
MERGE_PRIMITIVES = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _merge_key_for(field: str, items: list[Any]) -> str | None:
    key = MERGE_KEYS.get(field)
    if key is None:
        return None
    if key:
        return key
    for it in items:
        if isinstance(it, dict):
            return "containerPort" if "containerPort" in it else "port"
    return "port"


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch for the directives kubectl emits
    (``$patch: delete|replace``, ``$setElementOrder/``, ``$deleteFromPrimitiveList/``,
    ``$retainKeys``)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys"):
            continue
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            if isinstance(out.get(name), list):
                out[name] = [x for x in out[name] if x not in (v or [])]
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list):
            out[k] = _merge_list(k, out.get(k), v)
        elif isinstance(v, dict):
            merged = strategic_merge_patch(out.get(k), v)
            if merged is None:
                out.pop(k, None)
            else:
                out[k] = merged
        else:
            out[k] = v
    if isinstance(patch.get("$retainKeys"), list):
        keep = set(patch["$retainKeys"])
        out = {k: v for k, v in out.items() if k in keep or not isinstance(k, str)}
    for name, order in orders.items():
        out[name] = _reorder(name, out.get(name), order)
    return out


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    cur = copy.deepcopy(current) if isinstance(current, list) else []
    if field in MERGE_PRIMITIVES:
        return cur + [x for x in patch if x not in cur]
    key = _merge_key_for(field, cur + patch)
    if key is None or not all(isinstance(x, dict) for x in patch):
        return [x for x in copy.deepcopy(patch) if not (isinstance(x, dict) and x.get("$patch"))]
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [x for x in copy.deepcopy(patch) if x.get("$patch") != "replace"]
    for item in patch:
        idx = next((i for i, c in enumerate(cur) if isinstance(c, dict) and c.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                cur.pop(idx)
            continue
        if idx is None:
            cur.append(strategic_merge_patch({}, item))
        else:
            cur[idx] = strategic_merge_patch(cur[idx], item)
    return cur


def _reorder(field: str, items: Any, order: list[Any]) -> Any:
    if not isinstance(items, list):
        return items
    key = _merge_key_for(field, items)

    def ident(x: Any) -> Any:
        return x.get(key) if key and isinstance(x, dict) else x

    wanted = [ident(o) for o in order]
    ranked = sorted(items, key=lambda x: wanted.index(ident(x)) if ident(x) in wanted else len(wanted))
    return ranked


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, list):
            cur = cur[int(p)]
        elif isinstance(cur, dict):
            cur = cur[p]
        else:
            raise KeyError(p)
    return cur, parts[-1]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 add/remove/replace/move/copy/test.

    Raises:
        ApiError: 422 when an operation cannot be applied, 400 when malformed.
    """
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind in ("move", "copy"):
                src_parent, src_key = _parent(doc, _pointer(op["from"]))
                value = copy.deepcopy(src_parent[int(src_key)] if isinstance(src_parent, list) else src_parent[src_key])
                if kind == "move":
                    doc = _remove(doc, _pointer(op["from"]))
                doc = _add(doc, parts, value)
            elif kind == "add":
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                doc = _remove(doc, parts)
            elif kind == "replace":
                doc = _remove(doc, parts)
                doc = _add(doc, parts, copy.deepcopy(op["value"]))
            elif kind == "test":
                current = doc
                if parts:
                    parent, key = _parent(doc, parts)
                    current = parent[int(key)] if isinstance(parent, list) else parent[key]
                if current != op["value"]:
                    raise ApiError("Invalid", f"the server rejected our request due to an error in our request: test failed at {op['path']}")
            else:
                raise bad_request(f"unexpected json patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError("Invalid", f"the server rejected our request due to an error in our request: {op}") from exc
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent, key = _parent(doc, parts)
    if isinstance(parent, list):
        if key == "-":
            parent.append(value)
        else:
            idx = int(key)
            if idx > len(parent):
                raise IndexError(idx)
            parent.insert(idx, value)
    else:
        parent[key] = value
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, key = _parent(doc, parts)
    if isinstance(parent, list):
        parent.pop(int(key))
    else:
        del parent[key]
    return doc
