"""End to end with ``arcctl login``: device-code sign-in against the demo's
sandbox issuer (the test plays the user on the sign-in page), then arc-proxy
and kubectl with the cached login through the ``arcctl get-token`` plugin."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from demo import DemoEnvironment
from tests.support.e2e import Kubectl, start_proxy
from tests.support.kubectl import require_kubectl
from tests.support.processes import ROOT, child_env

pytestmark = pytest.mark.e2e


def test_login_device_code_then_kubectl_through_arc_proxy(demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """A config with only auth.issuer (no password): login by device code, then
    kubectl through arc-proxy is the demo user, with the token from the login cache."""
    doc = yaml.safe_load(demo_env.client_config_path.read_text())
    doc["auth"] = {"issuer": str(demo_env.idp["issuer"]), "ca_file": str(demo_env.idp["ca_file"]),
                   "client_id": demo_env.identity.client_id,
                   # kubectl's token for the cluster, the relay's own for the relay.
                   **{k: doc["auth"][k] for k in ("scope", "relay_scope") if k in doc["auth"]},
                   # The demo requires PoP: the bound token comes from the login's refresh token.
                   "pop": demo_env.require_pop}
    config = tmp_path / "login-config.yaml"
    config.write_text(yaml.safe_dump(doc))

    login = subprocess.Popen([sys.executable, "-m", "client.arcctl_entry", "login", "--config", str(config)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=child_env(), cwd=ROOT)
    try:
        assert login.stderr is not None
        line = login.stderr.readline()
        match = re.search(r"open (\S+) and enter the code (\S+)", line)
        assert match, line
        form = urllib.parse.urlencode({"user_code": match.group(2), "username": demo_env.identity.user,
                                       "password": demo_env.identity.password}).encode()
        ctx = ssl.create_default_context(cafile=str(demo_env.idp["ca_file"]))
        with urllib.request.urlopen(match.group(1), data=form, context=ctx, timeout=30) as resp:
            assert resp.status == 200
        assert login.wait(60) == 0, login.stderr.read()
    finally:
        if login.poll() is None:
            login.kill()
            login.wait()

    proxy = start_proxy(config, tmp_path / "kubeconfig")
    try:
        k = Kubectl(require_kubectl("1.33"), proxy.kubeconfig)
        assert k.text("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == \
            demo_env.identity.user_oid
        k.run("get", "pods", "-A")
    finally:
        proxy.stop()
