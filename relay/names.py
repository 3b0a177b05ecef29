"""What the relay accepts as a name, an id, a scope, a principal or agent metadata.

Every check here is a ``fullmatch`` over a closed character set: ``re.match``
with ``$`` also matches before a final ``"\\n"``, which let ``acc-nl\\n`` become
a cluster name. Values that reach logs, the registry or an admin's terminal
(names, ids, scopes, principal ids, what an agent reports about itself) never
carry control characters.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = [
    "MAX_PRINCIPAL_ID",
    "METADATA_COUNT_MAX",
    "METADATA_VERSION_MAX",
    "has_control_characters",
    "valid_assignment_id",
    "valid_name",
    "valid_principal_id",
    "valid_scope",
    "validate_agent_metadata",
]

# Azure resource names: letters, digits, '.', '_', '-'; short and slash free
# because "<rg>/<name>" is the cluster id and the stream target.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
NAME_RE = re.compile(_NAME)
# Role assignment ids are URL path segments: a little longer, same alphabet.
ASSIGNMENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Kubernetes namespace names are DNS labels (RFC 1123).
_NAMESPACE = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# The namespace form is for central Kubernetes roles only (relay/kubernetes_roles.py).
SCOPE_RE = re.compile(rf"/|/resourceGroups/{_NAME}(?:/clusters/{_NAME}(?:/namespaces/{_NAMESPACE})?)?")
# Object ids are GUIDs, UPNs are e-mail like; 256 leaves room for both and for
# group names some issuers use, while keeping one log line short.
MAX_PRINCIPAL_ID = 256
# Versions look like "v1.33.0+k3s1" or "1.30.2-gke.1587003".
METADATA_VERSION_MAX = 64
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_~-]{0,63}")
# Far above any real cluster; a bound so a count is a count, not a bignum.
METADATA_COUNT_MAX = 10_000_000
_METADATA_STRINGS = ("agentVersion", "kubernetesVersion")
_METADATA_COUNTS = ("totalNodeCount", "totalCoreCount")


def _str_fullmatch(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def valid_name(value: object) -> bool:
    """Whether ``value`` is acceptable as a resource group or cluster name."""
    return _str_fullmatch(NAME_RE, value)


def valid_assignment_id(value: object) -> bool:
    """Whether ``value`` is acceptable as a role assignment id."""
    return _str_fullmatch(ASSIGNMENT_ID_RE, value)


def valid_scope(value: object) -> bool:
    """Whether ``value`` is ``/``, ``/resourceGroups/RG``, ``/resourceGroups/RG/clusters/NAME``
    or ``/resourceGroups/RG/clusters/NAME/namespaces/NS``."""
    return _str_fullmatch(SCOPE_RE, value)


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control, format, separator-line or unassigned
    character (C0, DEL, C1, bidi overrides, U+2028...): anything that can move
    a terminal's cursor, forge a log line or hide text."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") for ch in text)


def valid_principal_id(value: object) -> bool:
    """Whether ``value`` can name a principal (object id, UPN, group id):
    1-256 characters, no whitespace, no control characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_PRINCIPAL_ID
        and not has_control_characters(value)
        and not any(ch.isspace() for ch in value)
    )


def validate_agent_metadata(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Keep only well-formed metadata an agent reported about itself.

    Args:
        data: one decoded metadata line (``agentVersion``, ``kubernetesVersion``,
            ``totalNodeCount``, ``totalCoreCount``; all optional).

    Returns:
        ``(clean, problems)``: the fields that passed, and one short text per
        field that did not (safe to log: it never quotes the value itself).
    """
    clean: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in data.items():
        if key in _METADATA_STRINGS:
            if value == "":
                continue  # "unknown": e.g. an API server without gitVersion
            if not isinstance(value, str):
                problems.append(f"{key} must be a string")
            elif len(value) > METADATA_VERSION_MAX:
                problems.append(f"{key} longer than {METADATA_VERSION_MAX} characters")
            elif not _VERSION_RE.fullmatch(value):
                problems.append(f"{key} has characters outside letters, digits and '.+_~-'")
            else:
                clean[key] = value
        elif key in _METADATA_COUNTS:
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{key} must be an integer")
            elif not 0 <= value <= METADATA_COUNT_MAX:
                problems.append(f"{key} must be between 0 and {METADATA_COUNT_MAX}")
            else:
                clean[key] = value
        elif "unknown fields ignored" not in problems:
            problems.append("unknown fields ignored")
    return clean, problems
