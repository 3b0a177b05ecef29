"""Label and field selectors (the string forms of ``labelSelector`` and
``fieldSelector``), parsed once and matched many times."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sandbox.apiserver.status import bad_request

Matcher = Callable[[Mapping[str, str]], bool]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    terms: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t for t in terms if t.strip()]


def _label_equals(key: str, value: str, *, negate: bool) -> Matcher:
    def check(labels: Mapping[str, str]) -> bool:
        equal = key in labels and labels[key] == value
        return not equal if negate else equal
    return check


def _label_in(key: str, values: frozenset[str], *, negate: bool) -> Matcher:
    def check(labels: Mapping[str, str]) -> bool:
        inside = key in labels and labels[key] in values
        return not inside if negate else inside
    return check


def _label_exists(key: str, *, negate: bool) -> Matcher:
    def check(labels: Mapping[str, str]) -> bool:
        return (key in labels) != negate
    return check


def parse_label_selector(text: str) -> Matcher:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``.

    Raises:
        ApiError: 400 when the selector does not parse.
    """
    checks: list[Matcher] = []
    for term in _split_terms(text or ""):
        m = _EQ_RE.match(term)
        if m:
            key, op, value = m.groups()
            checks.append(_label_equals(key, value, negate=op == "!="))
            continue
        m = _SET_RE.match(term)
        if not m:
            raise bad_request(f"unable to parse requirement: {term.strip()!r}")
        neg, key, op, values = m.groups()
        if op:
            if neg:
                raise bad_request(f"unable to parse requirement: {term.strip()!r}")
            vals = frozenset(v.strip() for v in values.split(",") if v.strip())
            checks.append(_label_in(key, vals, negate=op == "notin"))
        else:
            checks.append(_label_exists(key, negate=bool(neg)))
    return lambda labels: all(c(labels) for c in checks)


# Field selectors Kubernetes supports per kind (a subset that kubectl and
# controllers use); anything else is a 400 as upstream.
_FIELDS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {
    "*": {
        "metadata.name": lambda o: o.get("metadata", {}).get("name", ""),
        "metadata.namespace": lambda o: o.get("metadata", {}).get("namespace", ""),
    },
    "Pod": {
        "status.phase": lambda o: o.get("status", {}).get("phase", ""),
        "spec.nodeName": lambda o: o.get("spec", {}).get("nodeName", ""),
        "spec.restartPolicy": lambda o: o.get("spec", {}).get("restartPolicy", ""),
        "spec.serviceAccountName": lambda o: o.get("spec", {}).get("serviceAccountName", ""),
        "status.podIP": lambda o: o.get("status", {}).get("podIP", ""),
    },
    "Namespace": {"status.phase": lambda o: o.get("status", {}).get("phase", "")},
    "Secret": {"type": lambda o: o.get("type", "")},
    "Node": {"spec.unschedulable": lambda o: str(bool(o.get("spec", {}).get("unschedulable"))).lower()},
    "Event": {
        "involvedObject.kind": lambda o: o.get("involvedObject", {}).get("kind", ""),
        "involvedObject.name": lambda o: o.get("involvedObject", {}).get("name", ""),
        "involvedObject.namespace": lambda o: o.get("involvedObject", {}).get("namespace", ""),
        "involvedObject.uid": lambda o: o.get("involvedObject", {}).get("uid", ""),
        "reason": lambda o: o.get("reason", ""),
        "type": lambda o: o.get("type", ""),
    },
}


def parse_field_selector(text: str, kind: str) -> Callable[[dict[str, Any]], bool]:
    """Parse ``metadata.name=x,status.phase!=Running`` for objects of ``kind``.

    Raises:
        ApiError: 400 for an unparsable term or a field the kind does not support.
    """
    getters = {**_FIELDS["*"], **_FIELDS.get(kind, {})}
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_terms(text or ""):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        fname, op, value = m.groups()
        getter = getters.get(fname)
        if getter is None:
            raise bad_request(f'field label not supported: {fname}')
        checks.append(_field_equals(getter, value, negate=op == "!="))
    return lambda obj: all(c(obj) for c in checks)


def _field_equals(getter: Callable[[dict[str, Any]], str], value: str, *,
                  negate: bool) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        return (getter(obj) == value) != negate
    return check
