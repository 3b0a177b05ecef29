"""A principal belongs to its issuer at kube-aad-proxy (issue 17 item 6): with
two real sandbox issuers trusted, the agent config prefixes each issuer's
names (docs/identity-providers.md), so issuer B's token carrying issuer A's
admin ``oid`` and group ids is impersonated under B's prefix, never as A's
user, and the sandbox API server's RBAC (bound to A's prefixed admin) refuses it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import KubeAadProxy, KubeAadProxyConfig
from agent.config import agent_config_from_dict
from agent.kube_aad_proxy.names import NamePrefixes
from certs import (
    CertificateAuthority,
    IssuedCertificate,
    client_ssl_context,
    generate_key_pair,
    write_pem_pair,
)
from identity import TokenValidator, TrustedIssuer
from sandbox.idp import SandboxIdp
from tests.support.kube_aad_proxy import TIMEOUT, Response, read_response

try:
    from sandbox import SandboxApiServer
except ImportError:  # until sandbox/__init__.py re-exports it
    from sandbox.apiserver.server import SandboxApiServer

pytestmark = pytest.mark.timeout(60)

PROXY_NAME = "kube-aad-proxy.test"
ADMIN_OID = "72456920-99c3-4dff-ae71-fa469274d15a"  # admin@contoso.example in both issuers' directory
ADMINS_GROUP = "a-admins-group"
SECRETS = "/api/v1/namespaces/kube-system/secrets"
WHOAMI = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
BINDINGS = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"


@dataclass
class Env:
    a: SandboxIdp
    b: SandboxIdp
    api: SandboxApiServer
    proxy: KubeAadProxy
    ca_pem: bytes

    async def call(self, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Response:
        r, w = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", self.proxy.port, ssl=client_ssl_context(self.ca_pem), server_hostname=PROXY_NAME,
        ), TIMEOUT)
        data = json.dumps(body).encode() if body is not None else b""
        w.write(f"{method} {path} HTTP/1.1\r\nHost: {PROXY_NAME}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        try:
            return await read_response(r)
        finally:
            w.close()

    async def whoami(self, token: str) -> dict[str, Any]:
        resp = await self.call(token, "POST", WHOAMI,
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert resp.status == 201, resp.body
        info: dict[str, Any] = json.loads(resp.body)["status"]["userInfo"]
        return info


def _agent_doc(tmp: Path, a: SandboxIdp, b: SandboxIdp, api: SandboxApiServer,
               serving: IssuedCertificate) -> dict[str, Any]:
    """The agent config an operator writes: two issuers, A with an alias, B without."""
    cert, key = write_pem_pair(tmp, "serving", serving)
    (tmp / "api-ca.crt").write_bytes(api.ca_pem)
    (tmp / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    return {"relay": {"url": "https://127.0.0.1:1"}, "cluster": {"resource_group": "rg", "name": "c"},
            "agent_key_file": str(tmp / "agent.key"),
            "kube_aad_proxy": {"serving_cert_file": str(cert), "serving_key_file": str(key),
                               "upstream_url": api.url, "upstream_ca_file": str(tmp / "api-ca.crt"),
                               "oidc": {"issuers": [
                                   {"issuer": a.issuer, "ca_file": a.ca_file, "alias": "corp"},
                                   {"issuer": b.issuer, "ca_file": b.ca_file}]}}}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    a, b = SandboxIdp(tmp_path / "idp-a"), SandboxIdp(tmp_path / "idp-b")
    await a.start()
    await b.start()
    api = SandboxApiServer(tmp_path / "api")
    await api.start()
    ca = CertificateAuthority.create("issuer scope CA")
    serving = ca.issue_server([PROXY_NAME])
    config = agent_config_from_dict(_agent_doc(tmp_path, a, b, api, serving)).kube_aad_proxy
    validator = TokenValidator([TrustedIssuer(issuer=i.issuer, audiences=list(i.audiences), ca_pem=i.ca_pem)
                                for i in config.issuers])
    proxy = KubeAadProxy(KubeAadProxyConfig(
        upstream_url=api.url, upstream_ca_pem=api.ca_pem, serving_cert=serving,
        upstream_token=api.admin_token, validator=validator, cluster_name="sandbox",
        name_prefixes={i.issuer: NamePrefixes(i.username_prefix, i.groups_prefix) for i in config.issuers},
    ))
    await proxy.start("127.0.0.1", 0)
    yield Env(a, b, api, proxy, ca.certificate_pem)
    await proxy.stop()
    await validator.close()
    await api.stop()
    await b.stop()
    await a.stop()


async def test_other_issuer_is_impersonated_under_its_own_prefix(env: Env) -> None:
    """A's admin (bound to cluster-admin as ``corp:<oid>``) reads kube-system
    secrets; B's token with the same oid and A's admins group id is
    ``<B>#<oid>`` in ``<B>#``-prefixed groups and is refused by RBAC."""
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "corp-admins"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"corp:{ADMIN_OID}"},
                            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                             "name": f"corp:{ADMINS_GROUP}"}]}
    assert (await env.call(env.api.admin_token, "POST", BINDINGS, binding)).status == 201

    admin_a = env.a.mint("admin", groups=[ADMINS_GROUP])
    info = await env.whoami(admin_a)
    assert info["username"] == f"corp:{ADMIN_OID}" and f"corp:{ADMINS_GROUP}" in info["groups"]
    assert (await env.call(admin_a, "GET", SECRETS)).status == 200

    impostor = env.b.mint("admin", groups=[ADMINS_GROUP])
    info = await env.whoami(impostor)
    assert info["username"] == f"{env.b.issuer}#{ADMIN_OID}"
    assert f"{env.b.issuer}#{ADMINS_GROUP}" in info["groups"]
    assert not any(g.startswith("corp:") for g in info["groups"])
    resp = await env.call(impostor, "GET", SECRETS)
    assert resp.status == 403
    audit = [e for e in env.api.audit if e.path == SECRETS]
    assert [e.user for e in audit] == [f"corp:{ADMIN_OID}", f"{env.b.issuer}#{ADMIN_OID}"]
