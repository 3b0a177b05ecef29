"""`arcctl list` / `show` against the real relay, in json, yaml and table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from certs import fingerprint_sha256
from demo import DemoEnvironment
from tests.support.processes import ROOT, child_env

pytestmark = pytest.mark.e2e


def _arcctl(env: DemoEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.arcctl", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env=child_env(ARC_CONFIG=str(env.client_config_path)))


def test_arcctl_show_reports_connectivity_in_three_formats(demo_env: DemoEnvironment) -> None:
    """`show -n demo` has connectivityStatus Connected in json (default), yaml and table."""
    r = _arcctl(demo_env, "show", "-n", "demo")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "demo" and doc["connectivityStatus"] == "Connected"
    # Fingerprints by default, the PEM only when asked.
    assert "agentPublicKeyCertificate" not in r.stdout.replace("agentPublicKeyCertificateSha256", "")
    assert len(doc["agentPublicKeyCertificateSha256"]) == 64
    r = _arcctl(demo_env, "show", "-n", "demo", "--show-certificates")
    full = json.loads(r.stdout)
    assert "BEGIN CERTIFICATE" in full["agentPublicKeyCertificate"]
    assert fingerprint_sha256(full["agentPublicKeyCertificate"].encode()) \
        == doc["agentPublicKeyCertificateSha256"]
    r = _arcctl(demo_env, "show", "-n", "demo", "-o", "yaml")
    assert yaml.safe_load(r.stdout)["resourceGroup"] == "default"
    r = _arcctl(demo_env, "show", "-n", "demo", "-o", "table")
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "RESOURCEGROUP", "CONNECTIVITYSTATUS"]
    assert row.split()[:3] == ["demo", "default", "Connected"]


def test_arcctl_list_shows_the_demo_cluster(demo_env: DemoEnvironment) -> None:
    """`list` (cluster-user may read its cluster) returns the demo cluster."""
    r = _arcctl(demo_env, "list", "-g", "default")
    assert r.returncode == 0, r.stderr
    assert [c["name"] for c in json.loads(r.stdout)] == ["demo"]
    assert "BEGIN CERTIFICATE" not in r.stdout


def test_arcctl_show_unknown_cluster_is_one_line(demo_env: DemoEnvironment) -> None:
    """`show -n nope`: one line, non-zero exit, no traceback."""
    r = _arcctl(demo_env, "show", "-n", "nope")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
