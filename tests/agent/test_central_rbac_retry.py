"""A failed reconcile is retried with backoff, not only at the relay's next
list (issue 18, gap 4): a RoleBinding for a namespace that does not exist yet
fails at the sandbox API server; one WARNING for it however many retries;
once the namespace is made the binding appears without a new list."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from agent.central_rbac import CentralRbac
from agent.central_rbac_reconcile import Reconciler
from agent.kube_aad_proxy.names import NameMapper, NamePrefixes
from tests.support.waits import until

try:
    from sandbox import SandboxApiServer
except ImportError:  # until sandbox/__init__.py re-exports it
    from sandbox.apiserver.server import SandboxApiServer

pytestmark = pytest.mark.timeout(60)

CID = "rg1/alpha"
ISS = "https://idp.example"
RBAC = "/apis/rbac.authorization.k8s.io/v1"


async def test_agent_central_rbac_retries_a_failed_reconcile_with_backoff(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    async with SandboxApiServer(tmp_path / "api") as api:
        central = CentralRbac(CID, Reconciler(api.url, api.ca_pem, api.admin_token),
                              names=NameMapper({ISS: NamePrefixes()}), retry=(0.05, 0.2))
        try:
            doc = {"version": 2, "cluster": CID, "enabled": True, "assignments": [
                {"id": "1", "principalId": "u1", "principalIssuer": ISS, "principalType": "User",
                 "role": "kubernetes-writer", "namespace": "later"}]}
            assert central.receive(json.dumps(doc).encode()) == "ok"
            await until(lambda: central.reconcile_failures >= 4, "four failed reconciles")
            assert not central.reconciled.is_set()
            failed = [r for r in caplog.records if "central rbac reconcile failed" in r.getMessage()
                      and r.levelno >= logging.WARNING]
            assert len(failed) == 1, [r.getMessage() for r in failed]

            reconciler = central.reconciler
            assert reconciler is not None
            async with aiohttp.ClientSession(headers=reconciler.headers) as http:
                async with http.post(api.url + "/api/v1/namespaces", ssl=reconciler.ssl, json={
                        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "later"}}) as resp:
                    assert resp.status == 201, await resp.text()
                await until(central.reconciled.is_set, "the retried reconcile to work")
                async with http.get(api.url + f"{RBAC}/namespaces/later/rolebindings", ssl=reconciler.ssl) as resp:
                    names = [i["metadata"]["name"] for i in (await resp.json())["items"]]
            assert len(names) == 1 and names[0].startswith("arc-central-")
            assert central.lists_accepted == 1, "no new list was needed"
            assert central.reconcile_failures == 0
            assert any("central rbac reconcile worked after" in r.getMessage() for r in caplog.records)
        finally:
            await central.close()
