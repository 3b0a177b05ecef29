"""Pinned cluster serving CA end to end (issue 17 item 4), with the demo's
processes: arc-proxy pins the demo cluster's CA at first use; after the
cluster is re-registered at the relay with another serving CA, arc-proxy
refuses (one line naming both fingerprints, non-zero exit, kubeconfig
untouched); ``--accept-new-ca`` accepts it deliberately; ``--ca-fingerprint``
enforces a fingerprint handed out of band."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs import CertificateAuthority, fingerprint_sha256
from client.auth import TokenSource
from client.relay_client import RelayApi
from demo import DemoEnvironment
from demo.environment import CLUSTER, RESOURCE_GROUP
from tests.support.e2e import start_proxy
from tests.support.processes import child_env

pytestmark = pytest.mark.timeout(180)

REGISTRATION_KEYS = ("location", "agentPublicKeyCertificate", "servingCaCertificate", "tlsServerName")


async def _registration(env: DemoEnvironment) -> dict[str, Any]:
    cfg = env.admin_config()
    async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
        return await api.get_cluster(RESOURCE_GROUP, CLUSTER)


async def _register(env: DemoEnvironment, spec: dict[str, Any]) -> None:
    cfg = env.admin_config()
    async with RelayApi(cfg, TokenSource(cfg.auth.for_relay())) as api:
        await api.put_cluster(RESOURCE_GROUP, CLUSTER, {k: spec[k] for k in REGISTRATION_KEYS})


@pytest.fixture
def client_config(demo_env: DemoEnvironment, tmp_path: Path) -> Path:
    """A copy of the demo user's client config, so known_clusters lands in tmp_path."""
    path = tmp_path / "cfg" / "config.yaml"
    path.parent.mkdir()
    shutil.copy(demo_env.client_config_path, path)
    return path


@pytest.fixture
def re_registered(demo_env: DemoEnvironment) -> Iterator[tuple[dict[str, Any], bytes]]:
    """A function-scoped way to re-register the demo cluster with another
    serving CA; the original registration is put back afterwards."""
    original = asyncio.run(_registration(demo_env))
    other_ca = CertificateAuthority.create("someone else's CA").certificate_pem
    yield original, other_ca
    asyncio.run(_register(demo_env, original))


def _arc_proxy(config: Path, kubeconfig: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.proxy_cli", "-n", CLUSTER, "--port", "0", "--file", str(kubeconfig),
         *extra], capture_output=True, text=True, timeout=60, env=child_env(ARC_CONFIG=str(config)),
        stdin=subprocess.DEVNULL)


def test_arc_proxy_pins_the_ca_and_refuses_a_re_registered_one(
        demo_env: DemoEnvironment, client_config: Path, tmp_path: Path,
        re_registered: tuple[dict[str, Any], bytes]) -> None:
    """First use records (0600, one line); another CA at the relay is
    refused, kubeconfig untouched; --accept-new-ca pins the new CA."""
    original, other_ca = re_registered
    real = fingerprint_sha256(original["servingCaCertificate"].encode())
    bogus = fingerprint_sha256(other_ca)
    kubeconfig = tmp_path / "kubeconfig"
    known = client_config.parent / "known_clusters"

    proxy = start_proxy(client_config, kubeconfig)
    try:
        line = proxy.err.wait_for("First use of cluster")
        assert f"sha256:{real}" in line
    finally:
        assert proxy.stop() == 0
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert f"{RESOURCE_GROUP}/{CLUSTER} sha256:{real}" in known.read_text()
    before = kubeconfig.read_bytes()

    asyncio.run(_register(demo_env, {**original, "servingCaCertificate": other_ca.decode()}))
    refused = _arc_proxy(client_config, kubeconfig)
    assert refused.returncode != 0, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"sha256:{real}" in lines[0] and f"sha256:{bogus}" in lines[0] and "--accept-new-ca" in lines[0]
    assert kubeconfig.read_bytes() == before
    assert f"sha256:{real}" in known.read_text()

    accepted = start_proxy(client_config, kubeconfig, "--accept-new-ca")
    try:
        assert f"sha256:{bogus}" in accepted.err.wait_for("Accepted cluster")
    finally:
        accepted.stop()
    assert f"sha256:{bogus}" in known.read_text() and f"sha256:{real}" not in known.read_text()


def test_arc_proxy_enforces_an_out_of_band_fingerprint(
        demo_env: DemoEnvironment, client_config: Path, tmp_path: Path) -> None:
    """--ca-fingerprint of another CA: refused before anything is written;
    the right one (as arcctl show prints it): pinned and served."""
    kubeconfig = tmp_path / "kubeconfig"
    wrong = "sha256:" + fingerprint_sha256(CertificateAuthority.create("other").certificate_pem)
    refused = _arc_proxy(client_config, kubeconfig, "--ca-fingerprint", wrong)
    assert refused.returncode != 0 and "as --ca-fingerprint says" in refused.stderr, refused.stderr
    assert not kubeconfig.exists() and not (client_config.parent / "known_clusters").exists()

    shown = asyncio.run(_registration(demo_env))["servingCaCertificate"]
    right = fingerprint_sha256(shown.encode())
    proxy = start_proxy(client_config, kubeconfig, "--ca-fingerprint", right)
    try:
        assert "from --ca-fingerprint" in proxy.err.wait_for("Pinned cluster")
    finally:
        assert proxy.stop() == 0


def test_demo_pins_the_ca_it_registered(demo_env: DemoEnvironment) -> None:
    """`arcctl demo` registers its cluster with a fresh CA on every start, so
    it pins that CA for its client config itself (a restart on the same relay
    port would otherwise be refused as a changed CA)."""
    from client.known_clusters import KnownClusters

    pin = KnownClusters.beside(demo_env.client_config_path).get(demo_env.relay_url, f"{RESOURCE_GROUP}/{CLUSTER}")
    registration = asyncio.run(_registration(demo_env))
    assert pin is not None
    assert pin.fingerprint == fingerprint_sha256(registration["servingCaCertificate"].encode())
    assert pin.server_name == registration["tlsServerName"]
