"""The relay goes down while arc-proxy runs: arc-proxy says so once in its
shell, kubectl is answered at once (a TLS alert, not an EOF that client-go
retries for tens of seconds), and arc-proxy says once when the relay is back.

Timings are printed, not asserted (see test_relay_restart.py); the error text
itself shows which path kubectl took."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from demo import DemoEnvironment
from tests.support.e2e import Kubectl, start_proxy
from tests.support.kubectl import require_kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

# Generous bounds for a loaded machine; the lines normally come within a second.
LINE_WAIT = 30.0


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_relay_down_is_said_once_and_kubectl_is_answered_at_once(
        demo_env: DemoEnvironment, tmp_path: Path, version: str) -> None:
    """Direct kubeconfig shape. Stop the relay: one "lost the relay" line naming the cause; kubectl fails
    with "remote error: tls: internal error" (no EOF, no retries); start it
    again: one "reachable again" line and kubectl works."""
    kubectl = require_kubectl(version)
    kubeconfig = tmp_path / "kubeconfig"
    proxy = start_proxy(demo_env.client_config_path, kubeconfig, "--kubeconfig-mode", "direct")
    err = proxy.err
    k = Kubectl(kubectl, kubeconfig)
    try:
        k.run("get", "namespaces")
        demo_env.stop_relay()
        try:
            lost = err.wait_for("lost the relay", LINE_WAIT)
            assert "connection refused" in lost and demo_env.relay_url in lost
            t0 = time.monotonic()
            r = k.run("get", "namespaces", check=False, timeout=60)
            elapsed = time.monotonic() - t0
            text = r.stderr.decode(errors="replace")
            assert r.returncode != 0
            assert "remote error: tls: internal error" in text, text
            assert "EOF" not in text, text
            print(f"kubectl {version} failed after {elapsed:.2f} s while the relay was down")
        finally:
            demo_env.start_relay()
        err.wait_for("is reachable again", LINE_WAIT)
        demo_env.wait_connected()
        k.run("get", "namespaces")
    finally:
        proxy.stop()
    err.wait_eof()
    lines = err.seen
    assert sum("lost the relay" in ln for ln in lines) == 1, lines
    assert sum("reachable again" in ln for ln in lines) == 1, lines
    # No line per kubectl connection ("connection N refused ...").
    assert not [ln for ln in lines if re.search(r"\bconnection \d+ ", ln)], lines


# kubectl with the relay down must fail well inside this (client-go's EOF
# retries took 12-40 s); a kubectl still running then fails the test.
FAIL_FAST_BOUND = 15.0


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_relay_down_kubectl_prints_the_cause_through_proxy_url(
        demo_env: DemoEnvironment, tmp_path: Path, version: str) -> None:
    """proxy-url kubeconfig (the default), relay stopped: `kubectl get pods` fails within
    FAIL_FAST_BOUND and its stderr carries arc-proxy's cause (the refused
    CONNECT's reason phrase); with the relay back it works again."""
    kubectl = require_kubectl(version)
    kubeconfig = tmp_path / "kubeconfig"
    proxy = start_proxy(demo_env.client_config_path, kubeconfig)  # proxy-url: the default shape
    k = Kubectl(kubectl, kubeconfig)
    try:
        k.run("get", "pods", "-A")
        demo_env.stop_relay()
        try:
            proxy.err.wait_for("lost the relay", LINE_WAIT)
            t0 = time.monotonic()
            r = k.run("get", "pods", check=False, timeout=FAIL_FAST_BOUND)
            elapsed = time.monotonic() - t0
            text = r.stderr.decode(errors="replace")
            assert r.returncode != 0
            assert "arc-proxy: cannot reach the relay at" in text, text
            assert demo_env.relay_url in text and "connection was refused" in text, text
            assert "arc-proxy retries at least every" in text, text
            assert "EOF" not in text and "tls: internal error" not in text, text
            assert "did you specify the right host" not in text, text  # kubectl's own words
            print(f"kubectl {version} (proxy-url) failed after {elapsed:.2f} s: {text.splitlines()[0]}")
        finally:
            demo_env.start_relay()
        proxy.err.wait_for("is reachable again", LINE_WAIT)
        demo_env.wait_connected()
        k.run("get", "pods", "-A")
    finally:
        proxy.stop()
