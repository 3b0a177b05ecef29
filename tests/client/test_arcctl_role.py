"""``arcctl role``: export/import document handling and argument errors (the
commands against a real relay are in tests/e2e/test_identity_positive.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from client.arcctl import main
from client.arcctl_role import assignment_id, export_document, parse_import_document
from client.errors import ConfigError

ASSIGNMENTS = [
    {"id": "b", "principalId": "g1", "principalType": "Group", "role": "cluster-user",
     "scope": "/resourceGroups/rg/clusters/c", "createdAt": "2026-01-01T00:00:00Z"},
    {"id": "a", "principalId": "u1", "principalType": "User", "role": "viewer",
     "scope": "/resourceGroups/rg", "createdAt": "2026-01-01T00:00:00Z"},
]


def test_role_export_then_import_roundtrips_in_json_and_yaml() -> None:
    """Export drops server-side fields and sorts by id; both JSON and YAML
    renderings parse back to the same assignments."""
    doc = export_document(ASSIGNMENTS)
    assert doc["kind"] == "RoleAssignmentList" and [i["id"] for i in doc["items"]] == ["a", "b"]
    assert all("createdAt" not in i for i in doc["items"])
    for text in (json.dumps(doc), yaml.safe_dump(doc)):
        assert parse_import_document(text, "f") == doc["items"]


def test_role_import_fills_defaults_and_stable_ids() -> None:
    """A bare list works; missing principalType is User; missing id is the
    same derived id ``assign`` would use (import after assign is a no-op)."""
    items = parse_import_document('[{"principalId": "u", "role": "admin", "scope": "/"}]', "f")
    assert items == [{"id": assignment_id("u", "admin", "/"), "principalId": "u", "principalType": "User",
                      "role": "admin", "scope": "/"}]


@pytest.mark.parametrize(("text", "needle"), [
    ("{not yaml: [", "neither JSON nor YAML"),
    ('{"kind": "ConfigMap", "items": []}', "is not RoleAssignmentList"),
    ('{"items": {"a": 1}}', "list of role assignments"),
    ('[{"principalId": "u", "role": "root", "scope": "/"}]', "item 0 has role 'root'"),
    ('[{"principalId": "u", "role": "admin"}]', "item 0 lacks scope"),
    ('[{"principalId": "u", "role": "admin", "scope": "/", "principalType": "Robot"}]', "principalType"),
])
def test_role_import_refuses_bad_documents_in_one_line(text: str, needle: str) -> None:
    """Each problem is one ConfigError line naming the item and the fix."""
    with pytest.raises(ConfigError, match=needle) as info:
        parse_import_document(text, "f")
    assert "\n" not in str(info.value)


def test_role_assign_without_scope_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No -n/-g/--scope: one line saying how to name the scope, exit non-zero."""
    config = tmp_path / "c.yaml"
    config.write_text("relay: {url: 'https://127.0.0.1:1'}\n")
    code = main(["role", "assign", "--role", "viewer", "--assignee", "u", "--config", str(config)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--scope /" in err
