"""Reserved Kubernetes names from tokens never reach the API server as such
(issue 12 item 7): kube-aad-proxy in front of the sandbox API server (real
RBAC: ``system:masters`` is cluster-admin there), tokens from the sandbox
issuer, a real identity.TokenValidator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import KubeAadProxy, KubeAadProxyConfig
from agent.config import AgentConfigError
from agent.kube_aad_proxy.config import ProxyIssuerSection
from agent.kube_aad_proxy.names import NameMapper, NamePrefixes
from certs import CertificateAuthority, client_ssl_context
from configfile import validate_config
from identity import TokenValidator, TrustedIssuer
from sandbox.idp import DEFAULT_AUDIENCE, SandboxIdp
from tests.support.kube_aad_proxy import TIMEOUT, Response, read_response

try:
    from sandbox import SandboxApiServer
except ImportError:  # until sandbox/__init__.py re-exports it
    from sandbox.apiserver.server import SandboxApiServer

pytestmark = pytest.mark.timeout(60)

PROXY_NAME = "kube-aad-proxy.test"
DEMO_OID = "35233192-fc5d-4d88-83c8-36ab5ca99ad9"
SECRETS = "/api/v1/namespaces/kube-system/secrets"
WHOAMI = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


@dataclass
class Env:
    idp: SandboxIdp
    api: SandboxApiServer
    validator: TokenValidator
    ca_pem: bytes
    proxies: list[KubeAadProxy]

    async def proxy(self, prefixes: Mapping[str, NamePrefixes] | None = None,
                    impersonate_with: str = "oid") -> KubeAadProxy:
        ca = CertificateAuthority.create("kube-aad-proxy serving CA")
        self.ca_pem = ca.certificate_pem
        proxy = KubeAadProxy(KubeAadProxyConfig(
            upstream_url=self.api.url, upstream_ca_pem=self.api.ca_pem,
            serving_cert=ca.issue_server([PROXY_NAME]), upstream_token=self.api.admin_token,
            validator=self.validator, cluster_name="sandbox", name_prefixes=prefixes,
            impersonate_with=impersonate_with,  # type: ignore[arg-type]
        ))
        await proxy.start("127.0.0.1", 0)
        self.proxies.append(proxy)
        return proxy

    async def call(self, proxy: KubeAadProxy, token: str, method: str, path: str,
                   body: dict[str, Any] | None = None) -> Response:
        """One request through ``proxy`` with ``token``."""
        r, w = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", proxy.port, ssl=client_ssl_context(self.ca_pem), server_hostname=PROXY_NAME,
        ), TIMEOUT)
        data = json.dumps(body).encode() if body is not None else b""
        w.write(f"{method} {path} HTTP/1.1\r\nHost: {PROXY_NAME}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        try:
            return await read_response(r)
        finally:
            w.close()

    async def whoami(self, proxy: KubeAadProxy, token: str) -> dict[str, Any]:
        """The userInfo the API server derived from the impersonation headers."""
        resp = await self.call(proxy, token, "POST", WHOAMI,
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert resp.status == 201, resp.body
        info: dict[str, Any] = json.loads(resp.body)["status"]["userInfo"]
        return info


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    idp = SandboxIdp(tmp_path / "idp")
    await idp.start()
    api = SandboxApiServer(tmp_path / "api")
    await api.start()
    validator = TokenValidator([TrustedIssuer(issuer=idp.issuer, audiences=[DEFAULT_AUDIENCE], ca_pem=idp.ca_pem)])
    e = Env(idp, api, validator, b"", [])
    yield e
    for proxy in e.proxies:
        await proxy.stop()
    await validator.close()
    await api.stop()
    await idp.stop()


async def test_proxy_drops_system_masters_group_by_default(env: Env) -> None:
    """A token whose groups claim system:masters cannot act as cluster-admin:
    the API server sees the oid and the other groups only, and refuses the
    secrets of kube-system; with the group intact it would have been allowed."""
    proxy = await env.proxy()
    token = env.idp.mint("demo", groups=["system:masters", "ordinary-group"])
    info = await env.whoami(proxy, token)
    assert info["username"] == DEMO_OID
    assert "system:masters" not in info["groups"] and "ordinary-group" in info["groups"]
    resp = await env.call(proxy, token, "GET", SECRETS)
    assert resp.status == 403
    assert env.api.audit[-1].user == DEMO_OID and env.api.audit[-1].path == SECRETS
    # The same request as a real system:masters member (the static admin token,
    # passed through) is allowed: the 403 above is the dropped group's doing.
    assert (await env.call(proxy, env.api.admin_token, "GET", SECRETS)).status == 200


async def test_proxy_prefixes_names_when_configured(env: Env) -> None:
    """With prefixes on the issuer, every name is prefixed: system:masters
    becomes oidc-group:system:masters, which no binding names."""
    proxy = await env.proxy({env.idp.issuer: NamePrefixes("oidc:", "oidc-group:")})
    token = env.idp.mint("demo", groups=["system:masters"])
    info = await env.whoami(proxy, token)
    assert info["username"] == f"oidc:{DEMO_OID}"
    assert "oidc-group:system:masters" in info["groups"] and "system:masters" not in info["groups"]
    assert (await env.call(proxy, token, "GET", SECRETS)).status == 403


@pytest.mark.parametrize(("impersonate_with", "claims"), [
    ("upn", {"upn": "system:admin"}),
    ("oid", {"oid": "system:admin"}),
    ("upn", {"upn": "System:kube-controller-manager"}),
])
async def test_proxy_refuses_system_username(env: Env, impersonate_with: str, claims: dict[str, str]) -> None:
    """A ``system:`` user name from the token is refused with 403 and a Status
    naming the cause; the API server never sees the request."""
    proxy = await env.proxy(impersonate_with=impersonate_with)
    before = len(env.api.audit)
    resp = await env.call(proxy, env.idp.mint("demo", **claims), "GET", SECRETS)
    assert resp.status == 403
    status = json.loads(resp.body)
    assert status["kind"] == "Status" and "reserved Kubernetes name" in status["message"]
    assert len(env.api.audit) == before


async def test_proxy_username_prefix_makes_system_name_harmless(env: Env) -> None:
    """With a username prefix a ``system:admin`` upn becomes ``oidc:system:admin``."""
    proxy = await env.proxy({env.idp.issuer: NamePrefixes(username="oidc:")}, impersonate_with="upn")
    info = await env.whoami(proxy, env.idp.mint("demo", upn="system:admin"))
    assert info["username"] == "oidc:system:admin"


def test_name_prefixes_refuse_reserved_or_unsafe_prefix() -> None:
    """A prefix may not itself be reserved or carry spaces; the agent config says so in one line."""
    for bad in ("system:", "SYSTEM:x", "a b", "x\n"):
        with pytest.raises(ValueError):
            NamePrefixes(username=bad)
        with pytest.raises(AgentConfigError, match=r"issuers\[0\]\.groups_prefix: expected a prefix"):
            validate_config(ProxyIssuerSection, {"issuer": "i", "groups_prefix": bad}, "agent.yaml",
                            at="kube_aad_proxy.oidc.issuers[0]")
    assert validate_config(ProxyIssuerSection, {"issuer": "i"}, "agent.yaml").username_prefix is None
    mapped = NameMapper().map("https://other", "u", ["system:nodes", "g"])
    assert (mapped.username, mapped.groups, mapped.dropped_groups) == ("u", ("g",), 1)
