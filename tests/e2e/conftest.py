"""End-to-end fixtures: the demo's processes (sandbox API server, sandbox OIDC
issuer, arc-relay, arc-agent), each a separate process, started through
``demo.DemoEnvironment`` exactly as ``arcctl demo`` does, plus one
``arc-proxy`` for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from demo import DemoEnvironment
from tests.support.e2e import Proxy, start_proxy


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnvironment]:
    """The demo's four processes, started once per test session."""
    state = tmp_path_factory.mktemp("demo")
    # arcctl get-token (run by kubectl) caches tokens under XDG_CACHE_HOME: keep it in the temp dir.
    old_cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(state / "cache")
    env = DemoEnvironment(state / "state", client_config_path=state / "client-config.yaml",
                          relay_env={"ARC_RELAY_RECORD_DATA_FILE": str(state / "relay-data.bin")})
    try:
        env.start()
    except BaseException:
        logs = "\n".join(f"--- {p.name}:\n{p.read_text()[-2000:]}" for p in env.logs.glob("*.log"))
        env.stop()
        raise AssertionError(f"demo did not start; logs:\n{logs}") from None
    yield env
    env.stop()
    if old_cache is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old_cache


@pytest.fixture(scope="session")
def proxy(demo_env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """One ``arc-proxy -n demo`` for the session, user = exec plugin (OIDC token),
    kubeconfig in the default shape (proxy-url: kubectl CONNECTs through it)."""
    kc = tmp_path_factory.mktemp("kube") / "config"
    p = start_proxy(demo_env.client_config_path, kc)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def direct_proxy(demo_env: DemoEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """One ``arc-proxy -n demo --kubeconfig-mode direct``: kubectl's server is its port."""
    kc = tmp_path_factory.mktemp("kube-direct") / "config"
    p = start_proxy(demo_env.client_config_path, kc, "--kubeconfig-mode", "direct")
    yield p
    p.stop()
