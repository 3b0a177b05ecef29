"""The cluster's agent stops while arc-proxy runs (kubeconfig in the default
proxy-url shape): kubectl fails at once and prints arc-proxy's cause, that the
cluster is offline and what to check, instead of an EOF after client-go's retries;
with the agent back, kubectl works again.

Timings are printed, not asserted; kubectl is run with a timeout that a hang
(the old 15 s open timeout plus client-go's EOF retries) would exceed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from demo import DemoEnvironment
from tests.support.e2e import Kubectl, start_proxy
from tests.support.kubectl import require_kubectl
from tests.support.waits import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

# A kubectl still running after this many seconds fails the test (subprocess
# timeout): the refusal comes within the relay's agent grace (5 s in the demo)
# plus the exec credential plugin's time.
FAIL_FAST_BOUND = 15.0
# Bound on arc-proxy's "refused" line (normally there as kubectl exits).
LINE_WAIT = 30.0


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_cluster_offline_kubectl_prints_the_cause_through_proxy_url(
        demo_env: DemoEnvironment, tmp_path: Path, version: str) -> None:
    """Agent stopped, relay says Offline: `kubectl get pods` exits non-zero within
    FAIL_FAST_BOUND with "arc-proxy: cluster default/demo is offline ... check that
    arc-agent is running in the cluster" on stderr (the refused CONNECT's reason),
    no EOF; arc-proxy's shell has the same cause; agent restarted: kubectl works."""
    k = Kubectl(require_kubectl(version), tmp_path / "kubeconfig")
    proxy = start_proxy(demo_env.client_config_path, k.kubeconfig)
    try:
        k.run("get", "pods", "-A")
        demo_env.stop_agent()
        try:
            wait_until(lambda: asyncio.run(demo_env.cluster_status()) == "Offline",
                       "the cluster to be Offline")
            t0 = time.monotonic()
            r = k.run("get", "pods", check=False, timeout=FAIL_FAST_BOUND)
            elapsed = time.monotonic() - t0
            text = r.stderr.decode(errors="replace")
            assert r.returncode != 0
            assert "Unable to connect to the server: arc-proxy: cluster default/demo is offline " \
                   "(its agent is not connected to the relay): check that arc-agent is running " \
                   "in the cluster" in text, text
            assert "EOF" not in text and "tls: internal error" not in text, text
            refused = proxy.err.wait_for("is offline", LINE_WAIT)
            assert "check that arc-agent is running" in refused, refused
            print(f"kubectl {version} (proxy-url) failed after {elapsed:.2f} s: {text.splitlines()[0]}")
        finally:
            demo_env.start_agent()
        demo_env.wait_connected()
        k.run("get", "pods", "-A")
    finally:
        proxy.stop()
