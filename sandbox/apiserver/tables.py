"""``meta.k8s.io/v1`` Table responses for ``kubectl get`` (the columns the
real printers in pkg/printers/internalversion produce for these kinds)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def wants_table(accept: str) -> bool:
    """Whether the Accept header asks for ``as=Table``."""
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    return f"{h // (24 * 365)}y"


def age(obj: Obj) -> str:
    ts = obj.get("metadata", {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    created = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return human_duration((dt.datetime.now(dt.UTC) - created).total_seconds())


def _name(o: Obj) -> str:
    return str(o.get("metadata", {}).get("name", ""))


def _pod_row(o: Obj) -> list[Any]:
    spec, status = o.get("spec", {}), o.get("status", {})
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    phase = status.get("phase", "Pending")
    if o.get("metadata", {}).get("deletionTimestamp"):
        phase = "Terminating"
    return [_name(o), f"{ready}/{len(spec.get('containers') or [])}", phase, restarts, age(o),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>", "<none>", "<none>"]


def _node_row(o: Obj) -> list[Any]:
    conds = {c.get("type"): c.get("status") for c in o.get("status", {}).get("conditions") or []}
    state = "Ready" if conds.get("Ready") == "True" else "NotReady"
    labels = o.get("metadata", {}).get("labels") or {}
    roles = ",".join(sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")))
    info = o.get("status", {}).get("nodeInfo") or {}
    return [_name(o), state, roles or "<none>", age(o), info.get("kubeletVersion", "")]


def _deploy_row(o: Obj) -> list[Any]:
    spec, status = o.get("spec", {}), o.get("status", {})
    containers = spec.get("template", {}).get("spec", {}).get("containers") or []
    sel = spec.get("selector", {}).get("matchLabels") or {}
    return [_name(o), f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0), age(o),
            ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers),
            ",".join(f"{k}={v}" for k, v in sel.items())]


def _svc_row(o: Obj) -> list[Any]:
    spec = o.get("spec", {})
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    sel = spec.get("selector") or {}
    return [_name(o), spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), "<none>",
            ports or "<none>", age(o), ",".join(f"{k}={v}" for k, v in sel.items()) or "<none>"]


def _col(name: str, typ: str = "string", priority: int = 0, fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": typ, "format": fmt, "description": name, "priority": priority}


_NAME = _col("Name", fmt="name")
_AGE = _col("Age")
PRINTERS: dict[str, tuple[list[dict[str, Any]], Callable[[Obj], list[Any]]]] = {
    "Pod": ([_NAME, _col("Ready"), _col("Status"), _col("Restarts", "string"), _AGE, _col("IP", priority=1),
             _col("Node", priority=1), _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)],
            _pod_row),
    "Node": ([_NAME, _col("Status"), _col("Roles"), _AGE, _col("Version")], _node_row),
    "Namespace": ([_NAME, _col("Status"), _AGE],
                  lambda o: [_name(o), o.get("status", {}).get("phase", "Active"), age(o)]),
    "Deployment": ([_NAME, _col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer"), _AGE,
                    _col("Containers", priority=1), _col("Images", priority=1), _col("Selector", priority=1)],
                   _deploy_row),
    "ConfigMap": ([_NAME, _col("Data", "integer"), _AGE],
                  lambda o: [_name(o), len(o.get("data") or {}) + len(o.get("binaryData") or {}), age(o)]),
    "Secret": ([_NAME, _col("Type"), _col("Data", "integer"), _AGE],
               lambda o: [_name(o), o.get("type", "Opaque"), len(o.get("data") or {}), age(o)]),
    "Service": ([_NAME, _col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"), _AGE,
                 _col("Selector", priority=1)], _svc_row),
    "Event": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
              lambda o: [age({"metadata": {"creationTimestamp": o.get("lastTimestamp")}}), o.get("type", ""),
                         o.get("reason", ""),
                         f"{o.get('involvedObject', {}).get('kind', '').lower()}/"
                         f"{o.get('involvedObject', {}).get('name', '')}", o.get("message", "")]),
    "ServiceAccount": ([_NAME, _col("Secrets", "integer"), _AGE],
                       lambda o: [_name(o), len(o.get("secrets") or []), age(o)]),
}
_DEFAULT = ([_NAME, _col("Created At", "date")],
            lambda o: [_name(o), o.get("metadata", {}).get("creationTimestamp", "")])


def _row_object(o: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return o
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata", {})}


def to_table(kind: str, objs: list[Obj], *, include: str = "Metadata", list_meta: Obj | None = None,
             columns: bool = True) -> Obj:
    """A Table of ``objs``; ``columns=False`` omits the column definitions
    (later events of a watch, as the real server sends them)."""
    cols, row_fn = PRINTERS.get(kind, _DEFAULT)
    rows = []
    for o in objs:
        row: Obj = {"cells": row_fn(o)}
        obj = _row_object(o, include)
        if obj is not None:
            row["object"] = obj
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta or {},
            "columnDefinitions": cols if columns else None, "rows": rows}
