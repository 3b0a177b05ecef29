"""The sandbox issuer's client authentication, below HTTP: the users file's
certificate and federation keys, its one-line errors, the bound on the
replay table, and the run-time federation endpoint's authorization."""

from __future__ import annotations

import ssl
import time
import uuid
from pathlib import Path

import aiohttp
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

import sandbox.idp.client_auth as client_auth
from sandbox.idp import DEMO_USERS_FILE, DirectoryError, SandboxIdp, load_directory
from sandbox.idp.client_auth import JWT_BEARER_ASSERTION, ClientAuthenticator, ClientAuthError
from tests.support.workload_identity import (
    CERTIFICATE_APP,
    DEMO_CI_APP,
    SA_SUBJECT,
    ServiceAccountIssuer,
    write_workload_directory,
)


def test_users_file_with_an_unreadable_key_is_one_line(tmp_path: Path) -> None:
    """A federated credential whose public_key file is missing names the entry and the file."""
    doc = yaml.safe_load(DEMO_USERS_FILE.read_text())
    doc["service_principals"].append({"client_id": "5b0c7a43-2f44-4b7e-9f7e-0c7f1c1a9aff",
                                      "federated_credentials": [{"issuer": "https://x", "subject": "s",
                                                                 "public_key": "missing.pub"}]})
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(DirectoryError) as info:
        load_directory(path)
    assert "missing.pub" in str(info.value) and "\n" not in str(info.value)


def test_application_without_secret_refuses_every_secret(tmp_path: Path) -> None:
    """An application registered with a certificate only has no secret to guess."""
    directory = load_directory(write_workload_directory(tmp_path).users_file)
    auth = ClientAuthenticator(directory)
    for secret in ("", "None", "ci-secret"):
        with pytest.raises(ClientAuthError) as info:
            auth.authenticate({"client_id": CERTIFICATE_APP, "client_secret": secret}, "", ["aud"])
        assert info.value.error == "invalid_client"


def test_replay_table_is_bounded_and_never_forgets_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At MAX_SEEN_ASSERTIONS live jtis a new assertion is refused
    (temporarily_unavailable) rather than an old jti forgotten."""
    monkeypatch.setattr(client_auth, "MAX_SEEN_ASSERTIONS", 2)
    wl = write_workload_directory(tmp_path)
    auth = ClientAuthenticator(load_directory(wl.users_file))
    key = serialization.load_pem_private_key(wl.app_keys.private_key_pem, None)

    def assertion() -> str:
        import base64
        import hashlib

        from certs import load_certificate

        der = load_certificate(wl.app_keys.certificate_pem).public_bytes(serialization.Encoding.DER)
        now = int(time.time())
        return jwt.encode({"iss": CERTIFICATE_APP, "sub": CERTIFICATE_APP, "aud": "https://t",
                           "jti": str(uuid.uuid4()), "exp": now + 60}, key, algorithm="RS256",  # type: ignore[arg-type]
                          headers={"x5t#S256": base64.urlsafe_b64encode(
                              hashlib.sha256(der).digest()).rstrip(b"=").decode()})

    form = {"client_assertion_type": JWT_BEARER_ASSERTION}
    auth.authenticate({**form, "client_assertion": assertion()}, "", ["https://t"])
    auth.authenticate({**form, "client_assertion": assertion()}, "", ["https://t"])
    with pytest.raises(ClientAuthError) as info:
        auth.authenticate({**form, "client_assertion": assertion()}, "", ["https://t"])
    assert info.value.error == "temporarily_unavailable"


async def test_federation_endpoint_needs_a_directory_admin(idp: SandboxIdp) -> None:
    """Only a cluster-admins member may add a trust: the demo user gets 403,
    the admin 201, and the trust then authenticates the CI application."""
    sa = ServiceAccountIssuer()
    body = {"issuer": sa.issuer, "subject": SA_SUBJECT, "publicKey": sa.public_key_pem}
    url = f"{idp.url}/v1.0/applications/{DEMO_CI_APP}/federatedIdentityCredentials"
    ctx = ssl.create_default_context(cafile=idp.ca_file)
    async with aiohttp.ClientSession() as http:
        for user, status in (("demo", 403), ("admin", 201)):
            headers = {"Authorization": f"Bearer {idp.mint(user)}"}
            async with http.post(url, json=body, headers=headers, ssl=ctx) as resp:
                assert resp.status == status, await resp.text()
        form = {"grant_type": "client_credentials", "client_id": DEMO_CI_APP,
                "scope": "api://cluster-connect/.default", "client_assertion_type": JWT_BEARER_ASSERTION,
                "client_assertion": sa.token()}
        async with http.post(idp.token_endpoint, data=form, ssl=ctx) as resp:
            assert resp.status == 200, await resp.text()
