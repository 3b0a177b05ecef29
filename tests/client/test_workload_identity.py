"""Workload identity (issue 17 item 2): the client-credentials grant with a
federated token file (re-read on every renewal), a certificate
(``private_key_jwt``) and a secret file, against the real sandbox issuer
over TLS, which verifies each for real; and each refusal with its OAuth
error (``invalid_client``, RFC 7523 section 3.2)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from certs import generate_key_pair
from client.auth import TokenSource
from client.config import AuthConfig
from client.errors import AuthError, ConfigError
from sandbox.idp import SandboxIdp
from tests.support.workload_identity import (
    CERTIFICATE_APP,
    FEDERATED_APP,
    SA_SUBJECT,
    WorkloadDirectory,
    write_workload_directory,
)

ROOT = Path(__file__).resolve().parents[2]
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "api://cluster-connect/.default"


@pytest.fixture
def workload(tmp_path: Path) -> WorkloadDirectory:
    return write_workload_directory(tmp_path / "directory")


@pytest.fixture
async def wi_idp(tmp_path: Path, workload: WorkloadDirectory) -> AsyncIterator[SandboxIdp]:
    """The sandbox issuer with the workload applications registered."""
    server = SandboxIdp(tmp_path / "idp", workload.users_file, host="127.0.0.1", port=0)
    await server.start()
    yield server
    await server.stop()


def _auth(idp: SandboxIdp, **kw: Any) -> AuthConfig:
    return AuthConfig(**{"issuer": idp.issuer, "ca_file": idp.ca_file, "login": "client_credentials",
                         "scope": SCOPE, **kw})


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _oid(idp: SandboxIdp, client_id: str) -> str:
    app = idp.directory.find_app(client_id)
    assert app is not None
    return app.oid


async def test_federated_token_file_is_read_again_on_every_renewal(
        wi_idp: SandboxIdp, workload: WorkloadDirectory, tmp_path: Path) -> None:
    """A CI-job-like flow: the token file is rotated between two renewals and
    the second access token comes from the new file's assertion."""
    token_file = tmp_path / "azure-identity-token"
    first = workload.sa_issuer.token()
    token_file.write_text(first)
    tokens = TokenSource(_auth(wi_idp, client_id=FEDERATED_APP, federated_token_file=str(token_file)))
    got = await tokens.get()
    assert _claims(got)["oid"] == _oid(wi_idp, FEDERATED_APP) and _claims(got)["idtyp"] == "app"
    assert wi_idp.accepted_assertions[-1] == (FEDERATED_APP, "federated", _claims(first)["jti"])

    second = workload.sa_issuer.token()
    token_file.write_text(second)  # kubelet rotates the projected token
    tokens.invalidate()  # as when the token nears expiry or the relay refuses it
    renewed = await tokens.get()
    assert renewed != got
    assert wi_idp.accepted_assertions[-1] == (FEDERATED_APP, "federated", _claims(second)["jti"])


async def test_workload_env_fallbacks_as_azure_workload_identity_sets_them(
        wi_idp: SandboxIdp, workload: WorkloadDirectory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With login: client_credentials and nothing else, AZURE_CLIENT_ID,
    AZURE_TENANT_ID, AZURE_AUTHORITY_HOST and AZURE_FEDERATED_TOKEN_FILE are used."""
    token_file = tmp_path / "token"
    token_file.write_text(workload.sa_issuer.token())
    monkeypatch.setenv("AZURE_CLIENT_ID", FEDERATED_APP)
    monkeypatch.setenv("AZURE_TENANT_ID", wi_idp.tenant_id)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", wi_idp.url + "/")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    auth = AuthConfig(ca_file=wi_idp.ca_file, login="client_credentials", scope=SCOPE)
    assert _claims(await TokenSource(auth).get())["oid"] == _oid(wi_idp, FEDERATED_APP)


async def test_certificate_signs_a_private_key_jwt_assertion(
        wi_idp: SandboxIdp, workload: WorkloadDirectory) -> None:
    """The client proves the certificate's key; the issuer picks the
    certificate by its x5t#S256 thumbprint."""
    auth = _auth(wi_idp, client_id=CERTIFICATE_APP, client_certificate_file=str(workload.cert_file),
                 client_key_file=str(workload.key_file))
    token = await TokenSource(auth).get()
    assert _claims(token)["oid"] == _oid(wi_idp, CERTIFICATE_APP)
    assert wi_idp.accepted_assertions[-1][:2] == (CERTIFICATE_APP, "private_key_jwt")


async def test_client_secret_file_is_a_client_secret(wi_idp: SandboxIdp, tmp_path: Path) -> None:
    """client_secret_file holds the demo CI application's secret."""
    secret = tmp_path / "secret"
    secret.write_text("ci-secret\n")
    auth = _auth(wi_idp, client_id="2788b2a2-9ad3-4af4-8567-a7214ea67c4a", client_secret_file=str(secret))
    assert _claims(await TokenSource(auth).get())["idtyp"] == "app"


async def test_missing_federated_token_file_is_one_line(wi_idp: SandboxIdp, tmp_path: Path) -> None:
    """An absent token file is a ConfigError naming the file, not a traceback."""
    missing = tmp_path / "nope"
    auth = _auth(wi_idp, client_id=FEDERATED_APP, federated_token_file=str(missing))
    with pytest.raises(ConfigError) as info:
        await TokenSource(auth).get()
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


async def test_refused_federated_token_is_an_auth_error_without_the_token(
        wi_idp: SandboxIdp, workload: WorkloadDirectory, tmp_path: Path) -> None:
    """A federated token for another subject: the grant is refused with the
    OAuth error code in one line, and the token is never printed."""
    token_file = tmp_path / "token"
    bad = workload.sa_issuer.token(subject="system:serviceaccount:ci:other")
    token_file.write_text(bad)
    auth = _auth(wi_idp, client_id=FEDERATED_APP, federated_token_file=str(token_file))
    with pytest.raises(AuthError) as info:
        await TokenSource(auth).get()
    assert "invalid_client" in str(info.value) and bad not in str(info.value)


# -- the issuer's refusals, one request each ---------------------------------------


async def _token_request(idp: SandboxIdp, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import ssl

    ctx = ssl.create_default_context(cafile=str(idp.ca_file))
    async with aiohttp.ClientSession() as http:
        async with http.post(idp.token_endpoint, data=form, ssl=ctx) as resp:
            return resp.status, await resp.json()


def _assertion_form(client_id: str, assertion: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id, "scope": SCOPE,
            "client_assertion_type": JWT_BEARER, "client_assertion": assertion}


def _private_key_jwt(idp: SandboxIdp, workload: WorkloadDirectory, *, key: bytes | None = None,
                     **over: Any) -> str:
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from certs import load_certificate

    der = load_certificate(workload.app_keys.certificate_pem).public_bytes(serialization.Encoding.DER)
    x5t = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    now = int(time.time())
    claims = {"iss": CERTIFICATE_APP, "sub": CERTIFICATE_APP, "aud": idp.token_endpoint,
              "jti": str(uuid.uuid4()), "iat": now, "exp": now + 300, **over}
    signing = serialization.load_pem_private_key(key or workload.app_keys.private_key_pem, None)
    return jwt.encode(claims, signing, algorithm="RS256",  # type: ignore[arg-type]
                      headers={"x5t#S256": x5t})


async def test_issuer_accepts_a_valid_assertion_then_refuses_its_replay(
        wi_idp: SandboxIdp, workload: WorkloadDirectory) -> None:
    """A private_key_jwt assertion is single-use: the same jti again is invalid_client."""
    assertion = _private_key_jwt(wi_idp, workload)
    status, body = await _token_request(wi_idp, _assertion_form(CERTIFICATE_APP, assertion))
    assert status == 200 and "access_token" in body
    status, body = await _token_request(wi_idp, _assertion_form(CERTIFICATE_APP, assertion))
    assert (status, body["error"]) == (401, "invalid_client") and "replayed" in body["error_description"]


@pytest.mark.parametrize("case", ["bad_signature", "wrong_aud", "expired", "wrong_sub", "lifetime_too_long"])
async def test_issuer_refuses_a_bad_private_key_jwt(
        wi_idp: SandboxIdp, workload: WorkloadDirectory, case: str) -> None:
    """Signed by another key, for another audience, expired, for another
    subject, or living too long: invalid_client (RFC 7523 section 3.2)."""
    now = int(time.time())
    cases: dict[str, dict[str, Any]] = {
        "bad_signature": {"key": generate_key_pair("intruder", kind="rsa").private_key_pem},
        "wrong_aud": {"aud": "https://elsewhere.example/token"},
        "expired": {"iat": now - 3600, "exp": now - 1200},
        "wrong_sub": {"sub": FEDERATED_APP},
        "lifetime_too_long": {"exp": now + 7200},
    }
    over = cases[case]
    status, body = await _token_request(
        wi_idp, _assertion_form(CERTIFICATE_APP, _private_key_jwt(wi_idp, workload, **over)))
    assert (status, body["error"]) == (401, "invalid_client"), body
    assert "access_token" not in body


@pytest.mark.parametrize("case", ["bad_signature", "wrong_aud", "expired", "wrong_subject", "unknown_issuer"])
async def test_issuer_refuses_a_bad_federated_token(
        wi_idp: SandboxIdp, workload: WorkloadDirectory, case: str) -> None:
    """Each wrong federated token is invalid_client, with Entra's error code."""
    from cryptography.hazmat.primitives.asymmetric import ec

    sa = workload.sa_issuer
    token = {
        "bad_signature": lambda: sa.token(key=ec.generate_private_key(ec.SECP256R1())),
        "wrong_aud": lambda: sa.token(audience="api://something-else"),
        "expired": lambda: sa.token(lifetime=-1200, iat=int(time.time()) - 3600),
        "wrong_subject": lambda: sa.token(subject="system:serviceaccount:ci:other"),
        "unknown_issuer": lambda: sa.token(iss="https://attacker.example"),
    }[case]()
    status, body = await _token_request(wi_idp, _assertion_form(FEDERATED_APP, token))
    assert (status, body["error"]) == (401, "invalid_client"), body
    expected = {"wrong_subject": 70021, "unknown_issuer": 70021, "expired": 700024}.get(case)
    if expected is not None:
        assert body["error_codes"] == [expected]


async def test_federated_token_is_not_trusted_for_another_application(
        wi_idp: SandboxIdp, workload: WorkloadDirectory) -> None:
    """The trust belongs to one application: the same token for the
    certificate application is refused."""
    status, body = await _token_request(wi_idp, _assertion_form(CERTIFICATE_APP, workload.sa_issuer.token()))
    assert (status, body["error"]) == (401, "invalid_client")


# -- arcctl get-token as a process ----------------------------------------------------


async def test_arcctl_get_token_with_a_federated_token_file(
        wi_idp: SandboxIdp, workload: WorkloadDirectory, tmp_path: Path) -> None:
    """`arcctl get-token` (the exec plugin) prints an ExecCredential with the
    workload's app token, from the environment azure-workload-identity sets;
    `arcctl account show` names the application."""
    token_file = tmp_path / "token"
    token_file.write_text(workload.sa_issuer.token())
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": "https://127.0.0.1:1"},
                                      "auth": {"login": "client_credentials", "ca_file": wi_idp.ca_file}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "AZURE_CLIENT_ID": FEDERATED_APP, "AZURE_TENANT_ID": wi_idp.tenant_id,
           "AZURE_AUTHORITY_HOST": wi_idp.url, "AZURE_FEDERATED_TOKEN_FILE": str(token_file)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl_entry", "get-token", "--config", str(config),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    cred = json.loads(out)
    assert _claims(cred["status"]["token"])["oid"] == _oid(wi_idp, FEDERATED_APP)
    assert SA_SUBJECT not in out.decode()

    # account show: who the workload is, never its token
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl", "account", "show", "--config", str(config),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    shown = json.loads(out)
    assert shown["type"] == "application" and shown["clientId"] == FEDERATED_APP
    assert shown["account"] == _oid(wi_idp, FEDERATED_APP) and shown["tenant"] == wi_idp.tenant_id
    assert cred["status"]["token"] not in out.decode()


async def test_arcctl_login_with_client_credentials_is_one_line(tmp_path: Path) -> None:
    """A workload's config has nothing to sign in to: `arcctl login` says so, exit 1."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"relay": {"url": "https://127.0.0.1:1"},
                                      "auth": {"login": "client_credentials"}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.arcctl", "login", "--config", str(config), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err
    assert "client_credentials" in lines[0] and "Traceback" not in lines[0]


@pytest.mark.parametrize("extra", [{"client_secret": "s", "federated_token_file": "/x"},
                                   {"client_key_file": "/k"}])
async def test_ambiguous_client_credential_config_is_one_line(wi_idp: SandboxIdp, extra: dict[str, str]) -> None:
    """Two credentials at once, or a key without its certificate: a ConfigError
    naming the keys, before any token request."""
    with pytest.raises(ConfigError) as info:
        await TokenSource(_auth(wi_idp, client_id=FEDERATED_APP, **extra)).get()
    assert "auth." in str(info.value) or "auth sets" in str(info.value)
    assert "\n" not in str(info.value)
