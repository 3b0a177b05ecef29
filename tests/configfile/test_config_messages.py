"""Every config loader reports every mistake the same way: one line per problem,
``FILE: key.path: expected ..., got ...`` (tests/configfile is the table; each
loader's own tests check its keys' meaning)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_agent_config
from certs import generate_key_pair
from client.config import load_config
from cmdline.errors import ConfigError
from configfile import MAX_NAMED_FILE_BYTES
from configfile.source import MAX_CONFIG_BYTES
from relay.config import load_relay_config

AGENT_BASE: dict[str, Any] = {"relay": {"url": "https://relay.example"},
                              "cluster": {"resource_group": "rg", "name": "c"},
                              "agent_key_file": "agent.key", "forward_to": "127.0.0.1:1"}
CLIENT_BASE: dict[str, Any] = {"relay": {"url": "https://relay.example"}}

Loader = Callable[[Path], object]
LOADERS: dict[str, tuple[Loader, dict[str, Any]]] = {
    "relay": (load_relay_config, {}),
    "agent": (load_agent_config, AGENT_BASE),
    "client": (load_config, CLIENT_BASE),
}


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in change.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _problems(tmp_path: Path, which: str, document: str | dict[str, Any]) -> list[str]:
    """The error lines of loading ``document`` (merged into a valid base) with ``which``,
    with the file name taken out."""
    loader, base = LOADERS[which]
    (tmp_path / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    path = tmp_path / f"{which}.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(_merge(base, document)))
    with pytest.raises(ConfigError) as info:
        loader(path)
    assert info.value.exit_code == 2
    lines = str(info.value).split("\n")
    assert all(line.startswith(str(path)) for line in lines), lines
    return [line[len(str(path)):] for line in lines]


CASES: list[tuple[str, str, str | dict[str, Any], list[str]]] = [
    # The examples: the key path is the one that is wrong, never "internal error".
    ("relay wrong type (issue)", "relay", {"admins": 5}, [": admins: expected a list, got 5"]),
    ("relay section not a mapping (issue)", "relay", {"limits": [1]},
     [": limits: expected a mapping, got [1]"]),
    ("relay tls a string (issue)", "relay", {"tls": "x"}, [": tls: expected a mapping, got 'x'"]),
    ("relay unknown key with typo", "relay", {"limits": {"max_stream_per_client_session": 5}},
     [": limits.max_stream_per_client_session: unknown key 'max_stream_per_client_session'; "
      "did you mean 'streams_per_client_session'?"]),
    ("relay unknown top-level key, nothing close", "relay", {"zzz": 1},
     [": zzz: unknown key 'zzz'; the keys here are admins, admission, authorization, database, debug, "
      "health, limits, listen, listener, oidc, peering, presence, public_url, state_dir, tls"]),
    ("relay wrong value", "relay", {"admission": {"max_loop_lag_seconds": -1}},
     [": admission.max_loop_lag_seconds: expected a number >= 0, got -1"]),
    ("relay no string coercion", "relay", {"limits": {"max_head_bytes": "65536"}},
     [": limits.max_head_bytes: expected a whole number, got '65536'"]),
    ("relay nested list item", "relay", {"oidc": {"issuers": [{"issuer": "https://i", "audience": ["a"]}]}},
     [": oidc.issuers[0].audience: unknown key 'audience'; did you mean 'audiences'?"]),
    ("relay several problems, all listed", "relay",
     {"listen": "nowhere", "limits": {"drain_seconds": "soon"}, "admission": {"retry_after_seconds": 0}},
     [": listen: expected host:port such as '127.0.0.1:8443', got 'nowhere'",
      ": limits.drain_seconds: expected a number, got 'soon'",
      ": admission.retry_after_seconds: expected a whole number >= 1, got 0"]),
    ("relay not a mapping", "relay", "- a\n- b\n", [": (top level): expected a mapping, got ['a', 'b']"]),
    ("agent empty file", "agent", "", [": relay: required key is missing", ": cluster: required key is missing",
                                       ": agent_key_file: required key is missing"]),
    ("agent wrong type", "agent", {"metadata_interval_seconds": "5m"},
     [": metadata_interval_seconds: expected a number, got '5m'"]),
    ("agent wrong value", "agent", {"relay": {"url": "ftp://relay"}},
     [": relay.url: expected a relay URL such as 'https://relay.example.com:443', got 'ftp://relay'"]),
    ("agent typo in kube_aad_proxy", "agent", {"kube_aad_proxy": {"impersonate_width": "upn"}},
     [": kube_aad_proxy.impersonate_width: unknown key 'impersonate_width'; did you mean 'impersonate_with'?"]),
    ("agent nested wrong value", "agent", {"kube_aad_proxy": {"oidc": {"issuers": [
        {"issuer": "https://i", "username_prefix": "system:"}]}}},
     [": kube_aad_proxy.oidc.issuers[0].username_prefix: expected a prefix such as 'oidc:', not starting "
      "with 'system:', without spaces, got 'system:'"]),
    ("agent secret never shown", "agent", {"kube_aad_proxy": {"oidc": {"group_source": {
        "token_endpoint": "https://t", "client_id": "c", "scope": "s", "client_secret": ["hunter2"]}}}},
     [": kube_aad_proxy.oidc.group_source.client_secret: expected a string (the value given is a secret "
      "and not shown)"]),
    ("agent not a mapping", "agent", "just text\n", [": (top level): expected a mapping, got 'just text'"]),
    ("client empty file", "client", "", [": relay: required key is missing"]),
    ("client typo", "client", {"auth": {"pasword": "hunter2"}},
     [": auth.pasword: unknown key 'pasword'; did you mean 'password'?"]),
    ("client wrong type of a secret", "client", {"auth": {"password": {"value": "hunter2"}}},
     [": auth.password: expected a string (the value given is a secret and not shown)"]),
    ("client wrong type, long value cut", "client", {"resource_group": ["x" * 100]},
     [": resource_group: expected a string, got ['" + "x" * 55 + "..."]),
    ("client a number is a name", "client", {"resource_group": 2024, "relay": {"url": 5}},
     [": relay.url: expected a string, got 5"]),
]


@pytest.mark.parametrize(("which", "document", "expected"),
                         [pytest.param(w, d, e, id=name) for name, w, d, e in CASES])
def test_config_loaders_report_each_problem_in_one_line(tmp_path: Path, which: str,
                                                        document: str | dict[str, Any],
                                                        expected: list[str]) -> None:
    """Each loader, each kind of mistake: the exact lines (file name left out)."""
    assert _problems(tmp_path, which, document) == expected


@pytest.mark.parametrize("which", sorted(LOADERS))
def test_config_loaders_report_bad_yaml_with_line_and_column(tmp_path: Path, which: str) -> None:
    """A YAML syntax error is FILE:LINE:COLUMN and what is wrong."""
    assert _problems(tmp_path, which, "relay:\n  url: [https://x\nadmins: 2\n") == [
        ":3:7: not valid YAML: expected ',' or ']', but got ':'"]


@pytest.mark.parametrize("which", sorted(LOADERS))
def test_config_loaders_refuse_a_missing_or_huge_file(tmp_path: Path, which: str) -> None:
    """No file: the fix is named. A file past MAX_CONFIG_BYTES is not parsed."""
    loader, _ = LOADERS[which]
    with pytest.raises(ConfigError, match=r"(does not exist; pass an existing file|no client config at .*: run 'arcctl demo')"):
        loader(tmp_path / "missing.yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match=f"is larger than {MAX_CONFIG_BYTES} bytes"):
        loader(huge)


def test_agent_config_lists_every_unreadable_file(tmp_path: Path) -> None:
    """Files a config names are read at load; each unreadable or oversized one is a line."""
    (tmp_path / "big.crt").write_bytes(b"x" * (MAX_NAMED_FILE_BYTES + 1))
    lines = _problems(tmp_path, "agent", {"agent_key_file": "nokey", "relay": {"ca_file": "big.crt"}})
    assert lines == [
        f": agent_key_file: cannot read {str(tmp_path / 'nokey')!r}: No such file or directory; "
        "fix the path or its permissions",
        f": relay.ca_file: {str(tmp_path / 'big.crt')!r} is larger than {MAX_NAMED_FILE_BYTES} bytes; "
        "is it the right file?",
    ]


def test_agent_config_without_forward_to_needs_the_kube_aad_proxy_files(tmp_path: Path) -> None:
    """Without forward_to, kube-aad-proxy's required keys are each one line."""
    base = {k: v for k, v in AGENT_BASE.items() if k != "forward_to"}
    path = tmp_path / "agent.yaml"
    (tmp_path / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert str(info.value).split("\n") == [
        f"{path}: kube_aad_proxy.upstream_url: required key is missing (or set forward_to)",
        f"{path}: kube_aad_proxy.serving_cert_file: required key is missing",
        f"{path}: kube_aad_proxy.serving_key_file: required key is missing",
        f"{path}: kube_aad_proxy.upstream_ca_file: required key is missing",
    ]


def test_relay_config_empty_file_is_all_defaults(tmp_path: Path) -> None:
    """An empty relay config (and ``key: null``) is the embedded defaults."""
    path = tmp_path / "relay.yaml"
    path.write_text("limits:\nadmission: ~\n")
    path_empty = tmp_path / "empty.yaml"
    path_empty.write_text("")
    assert load_relay_config(path) == load_relay_config(path_empty) == load_relay_config(None)


@pytest.mark.parametrize(("module", "document"), [
    ("relay.cli", {"admins": 5, "limitz": {}}),
    ("agent.cli", {**AGENT_BASE, "metadata_interval_seconds": "5m", "limitz": {}}),
])
def test_daemons_print_every_problem_and_exit_2(tmp_path: Path, module: str, document: dict[str, Any]) -> None:
    """arc-relay and arc-agent: each problem on its own line, exit 2, no traceback."""
    (tmp_path / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run([sys.executable, "-m", module, "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert lines[1] == f"{path}: limitz: unknown key 'limitz'; did you mean 'limits'?"


def test_config_error_shows_an_alias_bomb_in_a_few_characters(tmp_path: Path) -> None:
    """YAML aliases nest one small list into 9**9 items; the message stays short and quick."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("admins: *a9")
    problems = _problems(tmp_path, "relay", "\n".join(lines) + "\n")
    assert problems[0] == ": admins[0]: expected a string, got [[[[...], [...], [...], [...], [...], [...], [...], [...]..."
    assert len(problems) == 9 + 10 and max(len(p) for p in problems) < 200


def test_config_error_keeps_a_forged_key_on_one_line(tmp_path: Path) -> None:
    """An unknown key holding a newline cannot start a second, forged line."""
    assert _problems(tmp_path, "client", {"auth": {"x\nforged: line": 1}}) == [
        ": auth.'x\\nforged: line': unknown key 'x\\nforged: line'; the keys here are audience, ca_file, "
        "client_certificate_file, client_id, client_key_file, client_secret, client_secret_file, directory_url, "
        "federated_token_file, issuer, lifetime, login, password, pop, relay_scope, resource, scope, scopes, "
        "token_command, token_endpoint, username"]
