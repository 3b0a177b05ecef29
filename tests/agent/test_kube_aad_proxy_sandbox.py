"""kube-aad-proxy in front of the project's sandbox API server, driven by real
kubectl (1.33 websocket streaming, 1.27 SPDY) and raw HTTP; the OIDC path with
SandboxIdp tokens and a real identity.TokenValidator."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import KubeAadProxy, KubeAadProxyConfig
from certs import CertificateAuthority
from identity import TokenValidator, TrustedIssuer
from sandbox.idp import DEFAULT_AUDIENCE, SandboxIdp
from tests.support.kube_aad_proxy import TIMEOUT, get, pattern, read_response
from tests.support.kubectl import require_kubectl

try:
    from sandbox import SandboxApiServer
except ImportError:  # until sandbox/__init__.py re-exports it
    from sandbox.apiserver.server import SandboxApiServer

pytestmark = pytest.mark.timeout(120)

PROXY_NAME = "kube-aad-proxy.test"
DEMO_OID = "35233192-fc5d-4d88-83c8-36ab5ca99ad9"


@dataclass
class Setup:
    api: SandboxApiServer
    proxy: KubeAadProxy
    ca_file: Path
    ca_pem: bytes
    tmp: Path

    def kubectl_args(self, token: str) -> list[str]:
        return [
            f"--server=https://127.0.0.1:{self.proxy.port}", f"--certificate-authority={self.ca_file}",
            f"--tls-server-name={PROXY_NAME}", f"--token={token}", "--kubeconfig=/dev/null",
            "--namespace=default",
        ]

    async def kubectl(self, version: str, token: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        binary = require_kubectl(version)
        proc = await asyncio.create_subprocess_exec(
            binary, *self.kubectl_args(token), *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": str(self.tmp)},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        from certs import client_ssl_context

        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", self.proxy.port, ssl=client_ssl_context(self.ca_pem), server_hostname=PROXY_NAME
            ),
            TIMEOUT,
        )


async def make_setup(tmp_path: Path, validator: TokenValidator | None = None) -> tuple[Setup, SandboxApiServer]:
    api = SandboxApiServer(tmp_path / "api")
    await api.start()
    ca = CertificateAuthority.create("kube-aad-proxy serving CA")
    ca_file = tmp_path / "proxy-ca.crt"
    ca_file.write_bytes(ca.certificate_pem)
    proxy = KubeAadProxy(KubeAadProxyConfig(
        upstream_url=api.url, upstream_ca_pem=api.ca_pem, serving_cert=ca.issue_server([PROXY_NAME]),
        upstream_token=api.admin_token if validator else None, validator=validator, cluster_name="sandbox",
    ))
    await proxy.start("127.0.0.1", 0)
    return Setup(api, proxy, ca_file, ca.certificate_pem, tmp_path), api


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s, api = await make_setup(tmp_path)
    yield s
    await s.proxy.stop()
    await api.stop()


@pytest.mark.parametrize("version", ["1.33", "1.27"])
async def test_proxy_serves_kubectl_get_and_apply(setup: Setup, version: str) -> None:
    """kubectl get/apply/get -o json through the proxy with the admin token."""
    token = setup.api.admin_token
    rc, _, err = await setup.kubectl(version, token, "create", "configmap", "cm1", "--from-literal=k=v")
    assert rc == 0, err
    rc, out, err = await setup.kubectl(version, token, "get", "configmap", "cm1", "-o", "json")
    assert rc == 0, err
    assert json.loads(out)["data"] == {"k": "v"}


async def test_proxy_drops_kubectl_impersonation_flags(setup: Setup) -> None:
    """kubectl --as/--as-group/--as-uid headers are removed: the API server sees the token's user."""
    rc, out, err = await setup.kubectl(
        "1.33", setup.api.admin_token, "--as=nobody", "--as-group=viewers", "--as-uid=42",
        "auth", "whoami", "-o", "json",
    )
    assert rc == 0, err
    user = json.loads(out)["status"]["userInfo"]
    assert user["username"] == "admin"
    assert all(r.impersonated_by == "" for r in setup.api.audit)


async def test_proxy_relays_watch_events_live(setup: Setup) -> None:
    """A watch opened through the proxy delivers an object created after it started."""
    token = setup.api.admin_token
    r, w = await setup.raw()
    w.write(get("/api/v1/namespaces/default/configmaps?watch=1", f"Authorization: Bearer {token}"))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200")
    rc, _, err = await setup.kubectl("1.33", token, "create", "configmap", "live-one")
    assert rc == 0, err
    seen = b""
    async with asyncio.timeout(TIMEOUT):
        while b'"live-one"' not in seen:
            seen += await r.read(65536)
    assert b'"ADDED"' in seen
    w.close()


@pytest.mark.parametrize("version", ["1.33", "1.27"])
async def test_proxy_streams_kubectl_exec_both_ways(setup: Setup, version: str) -> None:
    """kubectl exec -i (websocket on 1.33, SPDY on 1.27): stdin in, stdout out, exit code back."""
    token = setup.api.admin_token
    rc, _, err = await setup.kubectl(version, token, "run", "box", "--image=busybox")
    assert rc == 0, err
    rc, out, err = await setup.kubectl(version, token, "exec", "-i", "box", "--", "cat", stdin=b"through-the-proxy\n")
    assert rc == 0, err
    assert out == "through-the-proxy\n"
    rc, _, _ = await setup.kubectl(version, token, "exec", "box", "--", "sh", "-c", "exit 3")
    assert rc == 3


async def _tcp_echo_sha() -> tuple[asyncio.Server, int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        n = 0
        while data := await reader.read(1 << 16):
            h.update(data)
            n += len(data)
        writer.write(f"{n} {h.hexdigest()}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.mark.parametrize("version", ["1.33", "1.27"])
async def test_proxy_carries_kubectl_port_forward(setup: Setup, version: str) -> None:
    """kubectl port-forward through the proxy moves 8 MB byte-exact to a loopback target."""
    binary = require_kubectl(version)
    token = setup.api.admin_token
    target, port = await _tcp_echo_sha()
    manifest = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pf", "annotations": {"portforward.sandbox.cluster-connect.dev/8080": f"127.0.0.1:{port}"}},
        "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 8080}]}]},
    }
    rc, _, err = await setup.kubectl(version, token, "apply", "-f", "-", stdin=json.dumps(manifest).encode())
    assert rc == 0, err
    proc = await asyncio.create_subprocess_exec(
        binary, *setup.kubectl_args(token), "port-forward", "pod/pf", ":8080",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": str(setup.tmp)},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "Forwarding from 127.0.0.1:" in line, line
        local = int(line.split("127.0.0.1:")[1].split()[0])
        data = pattern(8 * 1024 * 1024, b"pf")
        r, w = await asyncio.open_connection("127.0.0.1", local)
        w.write(data)
        await w.drain()
        w.write_eof()
        answer = await asyncio.wait_for(r.readline(), 60)
        assert answer.decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]
        w.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        target.close()


async def test_proxy_refuses_duplicate_authorization_before_api_server(setup: Setup) -> None:
    """Two Authorization headers: 400 from the proxy, no audit record at the API server."""
    before = len(setup.api.audit)
    r, w = await setup.raw()
    w.write(get("/api/v1/pods", f"Authorization: Bearer {setup.api.admin_token}", "Authorization: Bearer other"))
    resp = await read_response(r)
    assert resp.status == 400
    assert len(setup.api.audit) == before
    w.close()


@pytest.fixture
async def oidc_setup(tmp_path: Path) -> AsyncIterator[tuple[Setup, SandboxIdp]]:
    idp = SandboxIdp(tmp_path / "idp")
    await idp.start()
    validator = TokenValidator([TrustedIssuer(issuer=idp.issuer, audiences=[DEFAULT_AUDIENCE], ca_pem=idp.ca_pem)])
    s, api = await make_setup(tmp_path, validator)
    yield s, idp
    await s.proxy.stop()
    await api.stop()
    await validator.close()
    await idp.stop()


async def test_proxy_impersonates_oidc_user_for_kubectl_whoami(oidc_setup: tuple[Setup, SandboxIdp]) -> None:
    """kubectl auth whoami with an OIDC token shows the oid, groups and extras the proxy set,
    not the --as values kubectl sent."""
    setup, idp = oidc_setup
    rc, out, err = await setup.kubectl(
        "1.33", idp.mint("demo"), "--as=system:admin", "--as-group=system:masters", "auth", "whoami", "-o", "json",
    )
    assert rc == 0, err
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == DEMO_OID
    assert "system:masters" not in info["groups"]
    assert info.get("extra", {}).get("oid") == [DEMO_OID]
    assert info.get("extra", {}).get("tid") == [idp.tenant_id]
    assert setup.api.audit[-1].impersonated_by == "admin"


async def test_proxy_refuses_invalid_oidc_token_before_api_server(oidc_setup: tuple[Setup, SandboxIdp]) -> None:
    """An expired token from the trusted issuer: kubectl sees 401, the API server sees nothing."""
    setup, idp = oidc_setup
    before = len(setup.api.audit)
    token = idp.mint("demo", lifetime=-600)
    rc, _, err = await setup.kubectl("1.33", token, "get", "pods")
    assert rc != 0
    assert "provide credentials" in err, err  # kubectl's wording for a 401
    assert len(setup.api.audit) == before


async def test_proxy_streams_kubectl_logs_follow(setup: Setup) -> None:
    """kubectl logs -f through the proxy shows a line written after it started."""
    binary = require_kubectl("1.33")
    token = setup.api.admin_token
    rc, _, err = await setup.kubectl("1.33", token, "run", "logger", "--image=busybox")
    assert rc == 0, err
    proc = await asyncio.create_subprocess_exec(
        binary, *setup.kubectl_args(token), "logs", "-f", "logger",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": str(setup.tmp)},
    )
    try:
        assert proc.stdout is not None
        # the follow request is open once the API server has logged it
        async with asyncio.timeout(30):
            while not any(r.path.endswith("/logger/log") for r in setup.api.audit) and proc.returncode is None:
                await asyncio.sleep(0.05)
        rc, _, err = await setup.kubectl("1.33", token, "exec", "logger", "--", "sh", "-c", "echo live-line > /proc/1/fd/1")
        assert rc == 0, err
        async with asyncio.timeout(30):
            while (line := await proc.stdout.readline()) and b"live-line" not in line:
                pass
        assert b"live-line" in line
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
