"""A stale central list gives kubectl a reason (issue 18, item 3: "fails
closed with a clear 403 reason"): real kubectl through kube-aad-proxy to the
sandbox API server, central roles reconciled there by the real reconciler.
Fresh: the viewer lists pods; its refused Secret read is the API server's
plain 403. Stale: the same list is 403 and kubectl prints the proxy's
``Warning:`` naming the cause; a list from the relay again: it works."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import KubeAadProxy, KubeAadProxyConfig
from agent.central_rbac import CentralRbac
from agent.central_rbac_reconcile import Reconciler
from agent.kube_aad_proxy.names import NamePrefixes
from certs import CertificateAuthority
from identity import TokenValidator, TrustedIssuer
from sandbox.idp import DEFAULT_AUDIENCE, SandboxIdp
from tests.agent.test_kube_aad_proxy_sandbox import DEMO_OID, PROXY_NAME, Setup
from tests.support.kubectl import require_kubectl
from tests.support.waits import until

try:
    from sandbox import SandboxApiServer
except ImportError:  # until sandbox/__init__.py re-exports it
    from sandbox.apiserver.server import SandboxApiServer

pytestmark = pytest.mark.timeout(120)

CID = "rg1/alpha"
BOUND = 90.0
REASON = "central Kubernetes roles are not applied: the agent has not heard from the relay for"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _list(issuer: str) -> bytes:
    return json.dumps({"version": 2, "cluster": CID, "enabled": True, "assignments": [
        {"id": "1", "principalId": DEMO_OID, "principalIssuer": issuer, "principalType": "User",
         "role": "kubernetes-viewer", "namespace": None}]}).encode()


@pytest.fixture
async def central_setup(tmp_path: Path) -> AsyncIterator[tuple[Setup, SandboxIdp, CentralRbac, Clock]]:
    idp = SandboxIdp(tmp_path / "idp")
    await idp.start()
    validator = TokenValidator([TrustedIssuer(issuer=idp.issuer, audiences=[DEFAULT_AUDIENCE], ca_pem=idp.ca_pem)])
    api = SandboxApiServer(tmp_path / "api")
    await api.start()
    ca = CertificateAuthority.create("kube-aad-proxy serving CA")
    ca_file = tmp_path / "proxy-ca.crt"
    ca_file.write_bytes(ca.certificate_pem)
    proxy = KubeAadProxy(KubeAadProxyConfig(
        upstream_url=api.url, upstream_ca_pem=api.ca_pem, serving_cert=ca.issue_server([PROXY_NAME]),
        upstream_token=api.admin_token, validator=validator, cluster_name="sandbox",
        name_prefixes={idp.issuer: NamePrefixes()},
    ))
    await proxy.start("127.0.0.1", 0)
    clock = Clock()
    central = CentralRbac(CID, Reconciler(api.url, api.ca_pem, api.admin_token), max_staleness=BOUND, clock=clock)
    proxy.policy.use_central(central)
    yield Setup(api, proxy, ca_file, ca.certificate_pem, tmp_path), idp, central, clock
    await central.close()
    await proxy.stop()
    await api.stop()
    await validator.close()
    await idp.stop()


@pytest.mark.parametrize("version", ["1.33", "1.27"])
async def test_central_rbac_stale_list_403_names_the_reason_in_kubectl(
        central_setup: tuple[Setup, SandboxIdp, CentralRbac, Clock], version: str) -> None:
    setup, idp, central, clock = central_setup
    require_kubectl(version)
    token = idp.mint("demo")
    assert central.receive(_list(idp.issuer)) == "ok"
    await until(central.reconciled.is_set, "the viewer binding to be reconciled")

    rc, _, err = await setup.kubectl(version, token, "get", "pods")
    assert rc == 0, err
    rc, _, err = await setup.kubectl(version, token, "get", "secrets")
    assert rc != 0 and "forbidden" in err.lower(), err
    assert REASON not in err, "a fresh list's 403 is the API server's own"

    clock.now += BOUND + 5
    rc, _, err = await setup.kubectl(version, token, "get", "pods")
    assert rc != 0 and "forbidden" in err.lower(), err
    assert f"Warning: {REASON} 95 s (bound 90 s)" in err, err

    assert central.receive(_list(idp.issuer)) == "ok"  # the relay's re-send after a reconnect
    rc, _, err = await setup.kubectl(version, token, "get", "pods")
    assert rc == 0 and "Warning" not in err, err
