"""``-o json|yaml|table`` rendering shared by every ``arcctl`` command."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from certs import fingerprint_sha256
from logfmt import escape_control

__all__ = ["CERTIFICATE_FIELDS", "FORMATS", "render", "with_certificate_fingerprints"]

FORMATS = ("json", "yaml", "table")

# Columns shown by ``-o table``, in order; anything else stays in json/yaml.
TABLE_COLUMNS = ("name", "resourceGroup", "connectivityStatus", "kubernetesVersion",
                 "agentVersion", "totalNodeCount", "lastConnectivityTime")


# A registration's certificate fields: two PEM blocks per cluster would bury
# the status a reader looks for, so list/show print each one's SHA-256
# fingerprint under ``<field>Sha256`` unless --show-certificates is given.
CERTIFICATE_FIELDS = ("agentPublicKeyCertificate", "servingCaCertificate")


def _fingerprint(pem: Any) -> str:
    if not isinstance(pem, str) or not pem.strip():
        return ""
    try:
        return fingerprint_sha256(pem.encode())
    except ValueError:
        # Not a certificate we can parse: say so rather than print it.
        return "(not a PEM certificate)"


def with_certificate_fingerprints(cluster: Mapping[str, Any]) -> dict[str, Any]:
    """``cluster`` with each certificate field replaced by ``<field>Sha256``
    (lowercase hex of the DER, as ``openssl x509 -fingerprint -sha256`` without
    colons), in the same place among the keys."""
    out: dict[str, Any] = {}
    for key, value in cluster.items():
        if key in CERTIFICATE_FIELDS:
            out[key + "Sha256"] = _fingerprint(value)
        else:
            out[key] = value
    return out


class _BlockScalarDumper(yaml.SafeDumper):
    """Multi-line strings (PEM certificates) as ``|`` block scalars, readable
    and copy-pasteable, instead of one quoted line full of ``\\n``."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML itself falls back to a quoted style where a block cannot hold the
    # text exactly (trailing spaces, control characters).
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockScalarDumper.add_representer(str, _represent_str)


def _cell(value: object) -> str:
    """One table cell on one line. Values come from the relay and, through it,
    from agents: control characters (newlines, ESC/OSC sequences, bidi
    overrides) are escaped so a cell can neither drive the admin's terminal
    nor fake a row."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return escape_control(str(value))


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "No resources found."
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
    if not columns:  # not a cluster listing: every key, in first-seen order
        columns = list(dict.fromkeys(k for r in rows for k in r))
    header = [escape_control(c.upper()) for c in columns]
    body = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=False)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *body]]
    return "\n".join(lines)


def render(value: Any, fmt: str = "json") -> str:
    """Render a JSON-like value.

    Args:
        value: a dict (one resource) or a list of dicts.
        fmt: ``json`` (default, as ``az``), ``yaml`` or ``table``.

    Returns:
        The text to print, without a trailing newline.

    Raises:
        ValueError: unknown format.
    """
    if fmt == "json":
        return json.dumps(value, indent=2, sort_keys=False)
    if fmt == "yaml":
        return yaml.dump(value, Dumper=_BlockScalarDumper, sort_keys=False,
                         default_flow_style=False).rstrip("\n")
    if fmt == "table":
        rows = value if isinstance(value, list) else [value]
        return _table(rows)
    raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
