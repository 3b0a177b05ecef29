"""Issue 12 item 9: every writer of a key or token creates it 0600, whatever
the umask, and replacing a file that was 0644 leaves it 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs import CertificateAuthority, write_pem_pair, write_secret_file
from client import kubeconfig
from client.auth import CachedTokenSource
from client.config import AuthConfig, ClientConfig, write_config
from relay.app import ensure_dev_tls


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a writer that relies on the umask would create 0666 files."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_secret_file_is_0600_and_replaces_a_0644_file(tmp_path: Path, open_umask: None) -> None:
    """New and replaced files are 0600; no temporary file is left behind."""
    target = tmp_path / "token"
    write_secret_file(target, "s3cret")
    assert _mode(target) == 0o600 and target.read_text() == "s3cret"
    target.chmod(0o644)
    write_secret_file(target, b"other")
    assert _mode(target) == 0o600 and target.read_bytes() == b"other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_write_secret_file_missing_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    """An unwritable target is an OSError, not a half-written file."""
    with pytest.raises(OSError):
        write_secret_file(tmp_path / "missing" / "key", b"k")
    assert list(tmp_path.iterdir()) == []


def test_pem_pair_and_dev_tls_keys_are_0600(tmp_path: Path, open_umask: None) -> None:
    """write_pem_pair (and ensure_dev_tls through it) writes the key 0600."""
    ca = CertificateAuthority.create("test CA")
    (tmp_path / "old.key").write_bytes(b"x")
    (tmp_path / "old.key").chmod(0o644)
    _, key = write_pem_pair(tmp_path, "old", ca.issue_server(["localhost"], ["127.0.0.1"]))
    assert _mode(key) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    dev = ensure_dev_tls(tmp_path / "relay")
    assert _mode(dev.key_file) == 0o600


def test_client_config_with_password_is_0600(tmp_path: Path, open_umask: None) -> None:
    """The client config may hold a password (the demo's): 0600."""
    path = tmp_path / "config.yaml"
    write_config(ClientConfig(relay_url="https://127.0.0.1:1", auth=AuthConfig(
        token_endpoint="https://127.0.0.1:2/token", client_id="c", username="u", password="p")), path)
    assert _mode(path) == 0o600


def test_kubeconfig_write_is_0600_and_leaves_no_temporary_file(tmp_path: Path, open_umask: None) -> None:
    """arc-proxy's kubeconfig may hold a token: replaced 0600 in one rename."""
    path = tmp_path / "kube" / "config"
    path.parent.mkdir()
    path.write_text("apiVersion: v1\n")
    path.chmod(0o644)
    kubeconfig.write_atomic(path, {"apiVersion": "v1", "kind": "Config"})
    assert _mode(path) == 0o600 and "kind: Config" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["config"]


async def test_token_cache_file_is_0600(tmp_path: Path, open_umask: None) -> None:
    """The token cache holds a bearer and a refresh token: 0600, no temporary file left."""
    source = CachedTokenSource(AuthConfig(token_command="echo cached-token"), cache_dir=tmp_path)
    assert (await source.get_token()).access_token == "cached-token"
    [cache] = list(tmp_path.iterdir())
    assert _mode(cache) == 0o600 and "cached-token" in cache.read_text()
