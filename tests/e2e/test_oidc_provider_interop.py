"""Interop with an identity provider nobody here wrote (issue 17 item 5):
panva's ``oidc-provider`` (npm, OpenID Certified) configured as an operator
would (tests/support/oidc_provider/server.mjs): JWT access tokens for
``api://cluster-connect`` by resource indicator, RS256 and ES256 keys, the
device flow, refresh tokens, plain ``sub`` subjects (no ``oid``).

Against it: the relay lets its user open a stream once a role names her
``iss`` + ``sub``; kube-aad-proxy impersonates her issuer-scoped name;
``arcctl login`` completes the device flow (the test is the user at the
provider's own pages) and ``arcctl get-token`` refreshes silently; a rotated
signing key is picked up; its token for another API is refused everywhere.
One provider process serves the whole module."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import KubeAadProxy, KubeAadProxyConfig
from agent.config import agent_config_from_dict
from agent.kube_aad_proxy.names import NamePrefixes
from certs import CertificateAuthority, client_ssl_context, generate_key_pair, write_pem_pair
from identity import TokenInvalid, TokenValidator, TrustedIssuer
from identity.validator_settings import ValidatorKeys
from relay import IssuerConfig
from sandbox.idp import SandboxIdp
from tests.support.kube_aad_proxy import TIMEOUT, Response, read_response
from tests.support.oidc_provider import (
    AUDIENCE,
    CLIENT_ID,
    OTHER_RESOURCE,
    RESOURCE_ES256,
    Browser,
    OidcProvider,
)
from tests.support.processes import ROOT, child_env
from tests.support.relay import RelayEnv, roundtrip, running_env
from tests.support.servers import server_port, start_echo_server
from tests.support.waits import WAIT, wait_until
from tunnel import ErrorCode, StreamRefused

try:
    from sandbox import SandboxApiServer
except ImportError:  # until sandbox/__init__.py re-exports it
    from sandbox.apiserver.server import SandboxApiServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# Short enough that a refresh is due within seconds (arcctl renews at a
# quarter of the lifetime), long enough for a loaded machine to use a token.
TOKEN_TTL = 12
SCOPE = "/resourceGroups/rg1/clusters/alpha"
PROXY_NAME = "kube-aad-proxy.test"
WHOAMI = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    op = OidcProvider.start(tmp_path_factory.mktemp("oidc-provider"), access_token_ttl=TOKEN_TTL)
    yield op
    op.stop()


def claims_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's header and claims, unverified (to name what was issued)."""
    def part(s: str) -> dict[str, Any]:
        return dict(json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))))
    header, body, _ = token.split(".")
    return part(header), part(body)


async def access_token(provider: OidcProvider, user: str, resource: str = AUDIENCE) -> str:
    """``user``'s access token by a whole device flow (blocking HTTP off the loop)."""
    body = await asyncio.to_thread(provider.device_tokens, user, resource)
    return str(body["access_token"])


# -- the relay ----------------------------------------------------------------------

@asynccontextmanager
async def relay_trusting(tmp: Path, provider: OidcProvider) -> AsyncIterator[RelayEnv]:
    """A relay trusting the sandbox issuer (its admin assigns roles) and the
    provider (alias ``op``), with an agent of rg1/alpha in front of an echo
    server, and the provider's ``alice`` a cluster-user of it (her principal
    id is ``<issuer>#alice``: the token has no ``oid``). An unknown kid
    is fetched at once (jwks_min_refresh_seconds: 0), so a rotation shows on
    the next token."""
    op = IssuerConfig(provider.issuer, (AUDIENCE,), str(provider.ca_file), alias="op")
    async with running_env(tmp, alias="sandbox", extra_issuers=(op,),
                           validator_options=ValidatorKeys(jwks_min_refresh_seconds=0).validator_kwargs()) as env:
        echo = await start_echo_server()
        keys = await env.register("rg1", "alpha")
        await env.start_agent("rg1/alpha", keys, ("127.0.0.1", server_port(echo)))
        await env.wait_agent("rg1/alpha")
        status, body = await env.api("PUT", "/api/v1/roleAssignments/alice", env.token("admin"), {
            "principalId": f"{provider.issuer}#alice", "principalIssuer": "op", "role": "cluster-user", "scope": SCOPE})
        assert status == 201 and body["principalIssuer"] == provider.issuer, body
        try:
            yield env
        finally:
            echo.close()


async def open_outcome(env: RelayEnv, token: str) -> ErrorCode | bytes:
    """What a client stream to rg1/alpha gets with ``token``: the echo, or the refusal."""
    client = await env.client(token)
    try:
        return await roundtrip(client, b"rg1/alpha", b"hello")
    except StreamRefused as exc:
        return ErrorCode(exc.code)


async def test_relay_opens_a_stream_for_the_role_holder_with_rs256_and_es256(
        tmp_path: Path, provider: OidcProvider) -> None:
    """alice (a role on ``iss#alice``) connects with either key's token; bob
    (no role) is refused the stream; alice's token for another API is refused
    at the door (401)."""
    async with relay_trusting(tmp_path, provider) as env:
        rs256, es256 = await access_token(provider, "alice"), await access_token(provider, "alice", RESOURCE_ES256)
        assert claims_of(rs256)[0]["alg"] == "RS256" and claims_of(es256)[0]["alg"] == "ES256"
        assert "oid" not in claims_of(rs256)[1] and claims_of(rs256)[1]["sub"] == "alice"
        assert await open_outcome(env, rs256) == b"hello"
        assert await open_outcome(env, es256) == b"hello"
        assert await open_outcome(env, await access_token(provider, "bob")) == ErrorCode.FORBIDDEN

        other = await access_token(provider, "alice", OTHER_RESOURCE)
        assert claims_of(other)[1]["aud"] == OTHER_RESOURCE
        status, _ = await env.api("GET", "/api/v1/clusters", other)
        assert status == 401
        status, body = await env.api("GET", "/api/v1/clusters", rs256)
        assert status == 200 and [c["id"] for c in body["value"]] == ["rg1/alpha"], body


async def test_relay_picks_up_a_rotated_signing_key(tmp_path: Path, provider: OidcProvider) -> None:
    """After the provider rotates, its tokens carry a kid the relay has never
    seen: the relay fetches the JWKS again and accepts them; tokens of the
    old key stay valid (the provider still publishes it)."""
    async with relay_trusting(tmp_path, provider) as env:
        before = await access_token(provider, "alice")
        assert await open_outcome(env, before) == b"hello"
        kid = await asyncio.to_thread(provider.rotate)
        after = await access_token(provider, "alice")
        assert claims_of(after)[0]["kid"] == kid != claims_of(before)[0]["kid"]
        assert await open_outcome(env, after) == b"hello"
        assert await open_outcome(env, before) == b"hello"


# -- kube-aad-proxy -----------------------------------------------------------------

async def _kap_call(port: int, ca_pem: bytes, token: str, method: str, path: str,
                    body: dict[str, Any] | None = None) -> Response:
    r, w = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl_context(ca_pem), server_hostname=PROXY_NAME), TIMEOUT)
    data = json.dumps(body).encode() if body is not None else b""
    w.write(f"{method} {path} HTTP/1.1\r\nHost: {PROXY_NAME}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    try:
        return await read_response(r)
    finally:
        w.close()


async def test_kube_aad_proxy_impersonates_the_issuer_scoped_subject(
        tmp_path: Path, provider: OidcProvider) -> None:
    """An agent config trusting the sandbox issuer and the provider (so names
    carry their issuer): the API server sees alice as the provider's prefixed
    ``alice``; the provider's token for another API is refused and nothing
    reaches the API server."""
    corp = SandboxIdp(tmp_path / "idp")
    await corp.start()
    api = SandboxApiServer(tmp_path / "api")
    await api.start()
    ca = CertificateAuthority.create("oidc interop CA")
    serving = ca.issue_server([PROXY_NAME])
    cert, key = write_pem_pair(tmp_path, "serving", serving)
    (tmp_path / "api-ca.crt").write_bytes(api.ca_pem)
    (tmp_path / "agent.key").write_bytes(generate_key_pair("x").private_key_pem)
    config = agent_config_from_dict({
        "relay": {"url": "https://127.0.0.1:1"}, "cluster": {"resource_group": "rg", "name": "c"},
        "agent_key_file": str(tmp_path / "agent.key"),
        "kube_aad_proxy": {"serving_cert_file": str(cert), "serving_key_file": str(key),
                           "upstream_url": api.url, "upstream_ca_file": str(tmp_path / "api-ca.crt"),
                           "oidc": {"issuers": [{"issuer": corp.issuer, "ca_file": corp.ca_file, "alias": "corp"},
                                                {"issuer": provider.issuer, "ca_file": str(provider.ca_file)}]}},
    }).kube_aad_proxy
    validator = TokenValidator([TrustedIssuer(issuer=i.issuer, audiences=list(i.audiences), ca_pem=i.ca_pem)
                                for i in config.issuers])
    proxy = KubeAadProxy(KubeAadProxyConfig(
        upstream_url=api.url, upstream_ca_pem=api.ca_pem, serving_cert=serving,
        upstream_token=api.admin_token, validator=validator, cluster_name="sandbox",
        name_prefixes={i.issuer: NamePrefixes(i.username_prefix, i.groups_prefix) for i in config.issuers}))
    await proxy.start("127.0.0.1", 0)
    try:
        prefix = next(i.username_prefix for i in config.issuers if i.issuer == provider.issuer)
        assert prefix, "two trusted issuers: each one's names carry a prefix"
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        for resource in (AUDIENCE, RESOURCE_ES256):  # RS256, then ES256
            resp = await _kap_call(proxy.port, ca.certificate_pem, await access_token(provider, "alice", resource),
                                   "POST", WHOAMI, review)
            assert resp.status == 201, resp.body
            assert json.loads(resp.body)["status"]["userInfo"]["username"] == prefix + "alice"
        other = await access_token(provider, "alice", OTHER_RESOURCE)
        served = len(api.audit)
        assert served > 0, "the accepted whoami is in the audit trail"
        resp = await _kap_call(proxy.port, ca.certificate_pem, other, "POST", WHOAMI, review)
        assert resp.status == 401, resp.body
        assert len(api.audit) == served, "a refused token must not reach the API server"
    finally:
        await proxy.stop()
        await validator.close()
        await api.stop()
        await corp.stop()


# -- arcctl login and get-token -----------------------------------------------------

def _arcctl(*args: str, cache: Path, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "client.arcctl_entry", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=child_env(XDG_CACHE_HOME=str(cache)), **popen)


def _get_token(config: Path, cache: Path) -> str:
    proc = _arcctl("get-token", "--config", str(config), cache=cache)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    return str(json.loads(out)["status"]["token"])


def _validate(provider: OidcProvider, token: str) -> tuple[str, str]:
    """(issuer, subject) of ``token`` as our validator sees it."""
    async def run() -> tuple[str, str]:
        validator = TokenValidator([TrustedIssuer(issuer=provider.issuer, audiences=[AUDIENCE],
                                                  ca_pem=provider.ca_pem)])
        try:
            principal = await validator.validate(token)
            return principal.issuer, principal.oid
        finally:
            await validator.close()
    return asyncio.run(run())


def test_arcctl_login_device_flow_then_silent_refresh(tmp_path: Path, provider: OidcProvider) -> None:
    """``arcctl login`` (config: issuer, client id, resource; arcctl's own
    default scopes) prints the code, the test signs carol in at the provider's pages,
    login exits 0; get-token hands out her token, and once it has expired a new
    one from the refresh token, with no prompt."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": "https://127.0.0.1:1"}, "auth": {
        "issuer": provider.issuer, "ca_file": str(provider.ca_file), "client_id": CLIENT_ID,
        "resource": AUDIENCE}}))
    cache = tmp_path / "cache"
    login = _arcctl("login", "--config", str(config), cache=cache)
    try:
        assert login.stderr is not None
        line = login.stderr.readline()
        match = re.search(r"open (\S+) and enter the code (\S+)", line)
        assert match, line
        Browser(provider).approve(match.group(1), match.group(2), "carol")
        assert login.wait(WAIT * 2) == 0, login.stderr.read()
    finally:
        if login.poll() is None:
            login.kill()
            login.wait()

    first = _get_token(config, cache)
    assert _validate(provider, first) == (provider.issuer, "carol")
    assert _get_token(config, cache) == first  # fresh: from the cache
    # Past its expiry it is due whatever the renew margin (the cache counts
    # the lifetime from when it received the token, a little after ``iat``).
    exp = float(claims_of(first)[1]["exp"])
    wait_until(lambda: time.time() > exp + 1, "the cached token to expire", timeout=TOKEN_TTL + WAIT)
    second = _get_token(config, cache)
    assert second != first and float(claims_of(second)[1]["exp"]) > exp
    assert _validate(provider, second) == (provider.issuer, "carol")


def test_validator_refuses_its_token_for_another_audience(provider: OidcProvider) -> None:
    """The same provider, the same user, a token for ``api://other-app``: wrong audience."""
    body = provider.device_tokens("alice", OTHER_RESOURCE)
    with pytest.raises(TokenInvalid, match="wrong audience"):
        _validate(provider, str(body["access_token"]))
