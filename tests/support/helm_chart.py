"""Render the generated Helm chart without Helm (not installable here).

Evaluates exactly the template constructs ``client.manifests_chart`` emits,
with Helm's semantics for each: ``.Values.a.b | quote``, ``| b64enc``,
``required "msg" .Values.x``, ``.Release.Namespace``, ``.Release.Service``, ``if/else/end`` around
one literal, a ``with`` block whose body is ``toYaml . | nindent N``, and
whole documents under ``{{- if .Values.x }}`` ... ``{{- end }}`` lines.
Anything else in a template is an error, so a construct the generator starts
emitting cannot pass unchecked.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import yaml

__all__ = ["RequiredValueMissing", "render"]


class RequiredValueMissing(Exception):
    """Helm's ``required`` failed: the message is what ``helm install`` prints."""


_WITH = re.compile(
    r"^( *)\{\{- with \.Values\.([\w.]+) \}\}\n\1(\w+):\n\1  \{\{- toYaml \. \| nindent (\d+) \}\}\n\1\{\{- end \}\}\n",
    re.MULTILINE)
_IF_DOCUMENT = re.compile(r"^\{\{- if \.Values\.([\w.]+) \}\}\n(.*?)^\{\{- end \}\}\n", re.MULTILINE | re.DOTALL)
_IF = re.compile(r'\{\{ if \.Values\.([\w.]+) \}\}("[^"]*")\{\{ else \}\}""\{\{ end \}\}')
_ACTION = re.compile(r"\{\{ (.*?) \}\}")
_REQUIRED = re.compile(r'^required "([^"]*)" \.Values\.([\w.]+)$')


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _truthy(value: Any) -> bool:
    return value not in (None, "", {}, [], 0, False)


def _pipeline(action: str, values: dict[str, Any], namespace: str) -> str:
    head, *filters = [p.strip() for p in action.split("|")]
    if head == ".Release.Namespace":
        value: Any = namespace
    elif head == ".Release.Service":
        value = "Helm"
    elif m := _REQUIRED.match(head):
        value = _lookup(values, m.group(2))
        if not _truthy(value):
            raise RequiredValueMissing(m.group(1))
    elif head.startswith(".Values."):
        value = _lookup(values, head.removeprefix(".Values."))
    else:
        raise ValueError(f"unknown template action: {action!r}")
    text = "" if value is None else str(value)
    for f in filters:
        if f == "b64enc":
            text = base64.b64encode(text.encode()).decode()
        elif f == "quote":
            text = json.dumps(text)
        else:
            raise ValueError(f"unknown template filter: {f!r}")
    return text


def render(template: str, values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The documents ``helm template -n namespace`` would produce."""
    def with_block(m: re.Match[str]) -> str:
        value = _lookup(values, m.group(2))
        if not _truthy(value):
            return ""
        body = yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip("\n")
        pad = " " * int(m.group(4))
        return f"{m.group(1)}{m.group(3)}:" + "".join("\n" + pad + line for line in body.splitlines()) + "\n"

    text = _IF_DOCUMENT.sub(lambda m: m.group(2) if _truthy(_lookup(values, m.group(1))) else "", template)
    text = _WITH.sub(with_block, text)
    text = _IF.sub(lambda m: m.group(2) if _truthy(_lookup(values, m.group(1))) else '""', text)
    text = _ACTION.sub(lambda m: _pipeline(m.group(1), values, namespace), text)
    if "{{" in text:
        raise ValueError("a template action was left unrendered")
    return [d for d in yaml.safe_load_all(text) if d]
