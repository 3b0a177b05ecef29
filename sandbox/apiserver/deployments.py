"""A tiny deployment controller: keeps ``spec.replicas`` pods matching the
template (named ``<deployment>-<template hash>-<suffix>`` as the real one
names them), replaces them when the template changes, deletes them with the
Deployment. There are no ReplicaSets: pods are owned by the Deployment."""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any

from sandbox.apiserver.defaults import apply_defaults
from sandbox.apiserver.resources import ResourceType, lookup
from sandbox.apiserver.store import Store

Obj = dict[str, Any]
PODS = lookup("", "v1", "pods")
HASH_LABEL = "pod-template-hash"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: Obj) -> str:
    """A stable 10-character name-safe hash of a pod template."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:10])


def _owned(store: Store, dep: Obj) -> list[Obj]:
    assert PODS is not None
    uid = dep["metadata"]["uid"]
    ns = dep["metadata"].get("namespace", "")
    return [p for p in store.items(PODS, ns)
            if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]


def reconcile(store: Store, dep: Obj, prepare: Callable[[ResourceType, Obj], None], *, deleted: bool = False) -> None:
    """Bring the Deployment's pods in line with its spec (or remove them all)."""
    assert PODS is not None
    pods = _owned(store, dep)
    if deleted:
        for p in pods:
            store.delete(PODS, p["metadata"]["namespace"], p["metadata"]["name"])
        return
    meta, spec = dep["metadata"], dep.get("spec", {})
    template = spec.get("template", {})
    want_hash = template_hash(template)
    current = [p for p in pods if p["metadata"].get("labels", {}).get(HASH_LABEL) == want_hash]
    for p in pods:
        if p not in current:
            store.delete(PODS, p["metadata"]["namespace"], p["metadata"]["name"])
    replicas = int(spec.get("replicas", 1))
    for p in current[replicas:]:
        store.delete(PODS, p["metadata"]["namespace"], p["metadata"]["name"])
    for _ in range(replicas - len(current)):
        pod: Obj = {"kind": "Pod", "apiVersion": "v1", "metadata": copy.deepcopy(template.get("metadata") or {}),
                    "spec": copy.deepcopy(template.get("spec") or {})}
        pm = pod["metadata"]
        pm.pop("creationTimestamp", None)
        pm["name"] = f"{meta['name']}-{want_hash}-" + "".join(secrets.choice(_SAFE) for _ in range(5))
        pm["namespace"] = meta.get("namespace", "")
        pm.setdefault("labels", {})[HASH_LABEL] = want_hash
        pm["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                  "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]
        apply_defaults(PODS, pod)
        prepare(PODS, pod)
        store.create(PODS, pod)
