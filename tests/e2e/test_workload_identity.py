"""Workload identity end to end (issue 17 item 2): a CI job with only a
federated token file (a service-account token of its own cluster's issuer)
runs arc-proxy and kubectl against the demo. The sandbox issuer is told to
trust that issuer for the demo's CI application, as an operator does with
``az ad app federated-credential create``; no secret is configured anywhere."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml

from client.auth import TokenSource
from client.relay_client import RelayApi
from demo import DemoEnvironment
from demo.environment import CLUSTER, RESOURCE_GROUP
from tests.support.e2e import Kubectl, start_proxy
from tests.support.kubectl import require_kubectl
from tests.support.workload_identity import (
    DEMO_CI_APP,
    SA_SUBJECT,
    TOKEN_EXCHANGE_AUDIENCE,
    ServiceAccountIssuer,
)

pytestmark = pytest.mark.timeout(180)

# The demo CI application's object id (sandbox/idp/demo-users.yaml).
DEMO_CI_OID = "a1e59bc1-9bda-4925-8724-233e595568d5"


async def _trust(env: DemoEnvironment, sa: ServiceAccountIssuer) -> None:
    """As the directory admin: federate the CI application with ``sa``, and
    give it cluster-user on the demo cluster at the relay."""
    admin = env.admin_config()
    token = await TokenSource(admin.auth).get()
    ctx = ssl.create_default_context(cafile=env.idp["ca_file"])
    url = f"{env.idp['url']}/v1.0/applications/{DEMO_CI_APP}/federatedIdentityCredentials"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, ssl=ctx, headers={"Authorization": f"Bearer {token}"}, json={
                "issuer": sa.issuer, "subject": SA_SUBJECT, "audiences": [TOKEN_EXCHANGE_AUDIENCE],
                "publicKey": sa.public_key_pem}) as resp:
            assert resp.status == 201, await resp.text()
    async with RelayApi(admin, TokenSource(admin.auth.for_relay())) as api:
        await api.put_role_assignment("wi-ci-cluster-user", {
            "principalId": DEMO_CI_OID, "principalType": "ServicePrincipal", "role": "cluster-user",
            "scope": f"/resourceGroups/{RESOURCE_GROUP}/clusters/{CLUSTER}"})


def test_ci_job_with_a_federated_token_file_uses_arc_proxy_and_kubectl(
        demo_env: DemoEnvironment, tmp_path: Path) -> None:
    """arc-proxy (relay session) and kubectl (exec plugin `arcctl get-token`)
    both authenticate as the CI application from the token file alone."""
    kubectl = Kubectl(require_kubectl("1.33"), tmp_path / "kubeconfig")
    sa = ServiceAccountIssuer()
    asyncio.run(_trust(demo_env, sa))
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(sa.token())
    doc = yaml.safe_load(demo_env.client_config_path.read_text())
    doc["auth"] = {"login": "client_credentials", "issuer": demo_env.idp["issuer"],
                   "ca_file": demo_env.idp["ca_file"], "client_id": DEMO_CI_APP,
                   "federated_token_file": str(token_file),
                   # the demo's cluster requires proof-of-possession: the app's token is bound too
                   "pop": bool(doc["auth"].get("pop")),
                   # kubectl's token for the cluster, the relay's own for arc-proxy's relay session
                   **{k: doc["auth"][k] for k in ("scope", "relay_scope") if k in doc["auth"]}}
    config = tmp_path / "ci-config.yaml"
    config.write_text(yaml.safe_dump(doc))

    proxy = start_proxy(config, kubectl.kubeconfig)
    try:
        user = json.loads(kubectl.text("auth", "whoami", "-o", "json"))["status"]["userInfo"]
        assert DEMO_CI_OID in user["username"], user
    finally:
        assert proxy.stop() == 0
